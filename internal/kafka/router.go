package kafka

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Router maps event types to topics.
type Router struct {
	prefix string
	// routes override the default topic, keyed by event type or by domain.
	routes map[string]string
	cache  sync.Map // event type → topic
	// cached counts the cache's entries, at most maxCached: event types are the
	// callers' to choose, so the cache must not grow with them.
	cached    atomic.Int64
	maxCached int64
}

// DefaultMaxCachedTypes is how many event types a Router remembers the topic of.
const DefaultMaxCachedTypes = 10000

// NewRouter routes "<domain>.<rest>" to "<prefix>.<domain>.events" unless routes names
// the event type or its domain.
func NewRouter(prefix string, routes map[string]string) *Router {
	return &Router{prefix: prefix, routes: routes, maxCached: DefaultMaxCachedTypes}
}

// SetCacheLimit bounds the event types whose topic is remembered; further types are
// routed the same way, without being remembered. Call it before the Router is used.
func (r *Router) SetCacheLimit(n int) { r.maxCached = int64(n) }

// Domain is the first segment of an event type.
func Domain(eventType string) string {
	if i := strings.IndexByte(eventType, '.'); i >= 0 {
		return eventType[:i]
	}
	return eventType
}

// Topic returns the topic of an event type.
func (r *Router) Topic(eventType string) string {
	if t, ok := r.cache.Load(eventType); ok {
		return t.(string)
	}
	t, ok := r.routes[eventType]
	if !ok {
		d := Domain(eventType)
		if t, ok = r.routes[d]; !ok {
			t = r.prefix + "." + d + ".events"
		}
	}
	// Reserve a place first, so that concurrent callers never pass maxCached.
	for n := r.cached.Load(); n < r.maxCached; n = r.cached.Load() {
		if r.cached.CompareAndSwap(n, n+1) {
			if _, loaded := r.cache.LoadOrStore(eventType, t); loaded {
				r.cached.Add(-1)
			}
			break
		}
	}
	return t
}

// DLQTopic returns the dead-letter topic of a domain.
func (r *Router) DLQTopic(domain string) string { return r.prefix + ".dlq." + domain }

// TopicSettings are the settings of topics the gateway creates.
type TopicSettings struct {
	Partitions        int32
	MaxReplication    int16
	MinInsyncReplicas int16
	DefaultRetention  time.Duration
	// Retention per domain (such as clinical: 90 days).
	Retention map[string]time.Duration
	// MaxMessageBytes is the topics' max.message.bytes: it must hold the largest
	// record batch the producer builds (see MaxMessageBytes).
	MaxMessageBytes int
	// MaxTopics bounds the topics events may go to (Topics.Admit); 0: no bound.
	MaxTopics int
}

// MaxMessageBytes is the producer's record-batch limit for events of up to
// maxEventBytes (payload plus room for key and headers).
func MaxMessageBytes(maxEventBytes int) int { return maxEventBytes + 64<<10 }

// DefaultTopicSettings are the guide's: 12 partitions, replication 3, min ISR 2,
// retention 30 days (clinical 90).
func DefaultTopicSettings() TopicSettings {
	return TopicSettings{
		Partitions:        12,
		MaxReplication:    3,
		MinInsyncReplicas: 2,
		DefaultRetention:  30 * 24 * time.Hour,
		Retention:         map[string]time.Duration{"clinical": 90 * 24 * time.Hour},
	}
}

// Owns reports whether topic is in the gateway's namespace, and its domain:
// "<prefix>.<domain>.events", "<prefix>.dlq.<domain>", or a --routes target.
func (r *Router) Owns(topic string) (domain string, ok bool) {
	if rest, found := strings.CutPrefix(topic, r.prefix+"."); found {
		if d, found := strings.CutPrefix(rest, "dlq."); found && isWord(d) {
			return d, true
		}
		if d, found := strings.CutSuffix(rest, ".events"); found && isWord(d) {
			return d, true
		}
	}
	for k, t := range r.routes {
		if t == topic {
			return Domain(k), true
		}
	}
	return "", false
}

// isWord is a domain name: a lowercase letter, then lowercase letters, digits or _.
func isWord(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// IsDomain reports whether s can be a domain (the first word of an event type).
func IsDomain(s string) bool { return isWord(s) && len(s) <= 100 }
