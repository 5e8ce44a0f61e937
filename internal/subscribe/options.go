package subscribe

import (
	"time"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/validate"
)

// Limits and defaults of a subscription's options.
const (
	DefaultMaxInFlight  = 100
	MaxMaxInFlight      = 10000
	DefaultAckDeadline  = 30 * time.Second
	MaxAckDeadline      = time.Hour
	DefaultMaxAttempts  = 5
	MaxMaxAttempts      = 100
	DefaultRetryBackoff = time.Second
	DefaultMaxBackoff   = time.Minute
	MinRetryBackoff     = 10 * time.Millisecond
	MaxRetryBackoff     = time.Hour
	DefaultMaxBatch     = 100
	MaxMaxBatch         = 1000
	MaxTopics           = 100
	MaxEventTypes       = 1000
	MaxSubscriptionName = 200
	// MaxIDsPerCall bounds the delivery ids of one Ack or Nack.
	MaxIDsPerCall   = 10000
	maxErrorType    = 255
	maxErrorMessage = 4096
)

// Options are one stream's settings, checked and with defaults filled.
type Options struct {
	Subscription  string
	Topics        []string // resolved topic names
	domains       map[string]string
	EventTypes    map[string]bool // nil: all
	MaxInFlight   int
	AckDeadline   time.Duration
	MaxAttempts   int32
	StartEarliest bool
	Ordering      eventgwv1.Ordering
	PayloadJSON   bool
	RetryBackoff  time.Duration
	MaxBackoff    time.Duration
	MaxBatch      int
}

// ParseOptions checks a SubscribeRequest: topics must be the gateway's own (or
// domains of it), numbers within their limits. Errors are *validate.Error.
func ParseOptions(req *eventgwv1.SubscribeRequest, defaultSubscription string, router *kafka.Router) (Options, error) {
	o := Options{
		Subscription: req.GetSubscription(),
		MaxInFlight:  int(req.GetMaxInFlight()),
		AckDeadline:  time.Duration(req.GetAckDeadlineSeconds()) * time.Second,
		MaxAttempts:  req.GetMaxAttempts(),
		Ordering:     req.GetOrdering(),
		PayloadJSON:  req.GetPayloadAsJson(),
		RetryBackoff: time.Duration(req.GetRetryBackoffMs()) * time.Millisecond,
		MaxBackoff:   time.Duration(req.GetMaxRetryBackoffMs()) * time.Millisecond,
		MaxBatch:     int(req.GetMaxBatch()),
		domains:      map[string]string{},
	}
	if o.Subscription == "" {
		o.Subscription = defaultSubscription
	}
	if err := CheckSubscription(o.Subscription); err != nil {
		return o, err
	}
	if len(req.GetTopics()) == 0 {
		return o, validate.Errorf("topics", "is required: name at least one topic or domain (such as \"patient\")")
	}
	if len(req.GetTopics()) > MaxTopics {
		return o, validate.Errorf("topics", "names %d topics, over the limit of %d", len(req.GetTopics()), MaxTopics)
	}
	for _, t := range req.GetTopics() {
		topic, domain := t, ""
		if kafka.IsDomain(t) {
			topic = router.Topic(t)
			domain = t
		}
		d, ok := router.Owns(topic)
		if !ok {
			return o, validate.Errorf("topics", "%q is not a topic of this gateway: name a domain such as \"patient\", or a topic such as %q", truncate(t, 60), router.Topic("patient"))
		}
		if domain == "" {
			domain = d
		}
		if _, dup := o.domains[topic]; !dup {
			o.Topics = append(o.Topics, topic)
			o.domains[topic] = domain
		}
	}
	if len(req.GetEventTypes()) > MaxEventTypes {
		return o, validate.Errorf("event_types", "names %d types, over the limit of %d", len(req.GetEventTypes()), MaxEventTypes)
	}
	for _, et := range req.GetEventTypes() {
		if err := validate.EventType("event_types", et); err != nil {
			return o, err
		}
		if o.EventTypes == nil {
			o.EventTypes = map[string]bool{}
		}
		o.EventTypes[et] = true
	}
	switch {
	case o.MaxInFlight == 0:
		o.MaxInFlight = DefaultMaxInFlight
	case o.MaxInFlight < 0 || o.MaxInFlight > MaxMaxInFlight:
		return o, validate.Errorf("max_in_flight", "must be 1-%d (default %d)", MaxMaxInFlight, DefaultMaxInFlight)
	}
	switch {
	case o.AckDeadline == 0:
		o.AckDeadline = DefaultAckDeadline
	case o.AckDeadline < 0 || o.AckDeadline > MaxAckDeadline:
		return o, validate.Errorf("ack_deadline_seconds", "must be 1-%d (default %d)", int(MaxAckDeadline.Seconds()), int(DefaultAckDeadline.Seconds()))
	}
	switch {
	case o.MaxAttempts == 0:
		o.MaxAttempts = DefaultMaxAttempts
	case o.MaxAttempts < 0 || o.MaxAttempts > MaxMaxAttempts:
		return o, validate.Errorf("max_attempts", "must be 1-%d (default %d)", MaxMaxAttempts, DefaultMaxAttempts)
	}
	switch req.GetStartPosition() {
	case eventgwv1.StartPosition_START_POSITION_UNSPECIFIED, eventgwv1.StartPosition_START_POSITION_LATEST:
	case eventgwv1.StartPosition_START_POSITION_EARLIEST:
		o.StartEarliest = true
	default:
		return o, validate.Errorf("start_position", "is not a known position (START_POSITION_LATEST or START_POSITION_EARLIEST)")
	}
	switch o.Ordering {
	case eventgwv1.Ordering_ORDERING_UNSPECIFIED:
		o.Ordering = eventgwv1.Ordering_ORDERING_KEY
	case eventgwv1.Ordering_ORDERING_KEY, eventgwv1.Ordering_ORDERING_PARTITION, eventgwv1.Ordering_ORDERING_NONE:
	default:
		return o, validate.Errorf("ordering", "is not a known ordering (ORDERING_KEY, ORDERING_PARTITION or ORDERING_NONE)")
	}
	switch {
	case o.RetryBackoff == 0:
		o.RetryBackoff = DefaultRetryBackoff
	case o.RetryBackoff < MinRetryBackoff || o.RetryBackoff > MaxRetryBackoff:
		return o, validate.Errorf("retry_backoff_ms", "must be %d-%d (default %d)", MinRetryBackoff.Milliseconds(), MaxRetryBackoff.Milliseconds(), DefaultRetryBackoff.Milliseconds())
	}
	switch {
	case o.MaxBackoff == 0:
		o.MaxBackoff = max(DefaultMaxBackoff, o.RetryBackoff)
	case o.MaxBackoff < o.RetryBackoff || o.MaxBackoff > MaxRetryBackoff:
		return o, validate.Errorf("max_retry_backoff_ms", "must be between retry_backoff_ms and %d (default %d)", MaxRetryBackoff.Milliseconds(), DefaultMaxBackoff.Milliseconds())
	}
	switch {
	case o.MaxBatch == 0:
		o.MaxBatch = DefaultMaxBatch
	case o.MaxBatch < 0 || o.MaxBatch > MaxMaxBatch:
		return o, validate.Errorf("max_batch", "must be 1-%d (default %d)", MaxMaxBatch, DefaultMaxBatch)
	}
	return o, nil
}

// CheckSubscription checks a subscription name (a Kafka consumer group id).
func CheckSubscription(name string) error {
	if name == "" {
		return validate.Errorf("subscription", "is required")
	}
	return validate.Name("subscription", name, MaxSubscriptionName, true)
}

// Domain is the domain of one of the subscription's topics.
func (o *Options) Domain(topic string) string { return o.domains[topic] }

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
