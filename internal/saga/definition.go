package saga

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/eventgw/eventgw/internal/validate"
)

// Limits of definitions and of the data a saga carries.
const (
	MaxIDLen          = 100
	MaxNameLen        = 255
	MaxDescriptionLen = 4096
	MaxSteps          = 100
	MaxTimeoutSeconds = 86400
	MaxAttempts       = 100
	MaxBackoffMS      = 3_600_000
	MaxMultiplier     = 10.0
	// MaxContextBytes bounds a saga's context (as started, and with outputs laid over
	// it), a step's fixed input and a step's output, as JSON.
	MaxContextBytes = 256 << 10
	// MaxIdempotencyKey bounds StartSaga's idempotency key (bytes).
	MaxIdempotencyKey = 255
	// MaxErrorTypeLen and MaxErrorMessageLen bound a worker's FailTask.
	MaxErrorTypeLen    = 100
	MaxErrorMessageLen = 4096
)

// Defaults of a step.
const (
	DefaultTimeoutSeconds   = 60
	DefaultMaxAttempts      = 3
	DefaultInitialBackoffMS = 1000
	DefaultMultiplier       = 2.0
	DefaultMaxBackoffMS     = 60_000
	DefaultJitter           = 0.2
)

// RetryPolicy is how often a step's action (and its compensation) is attempted and how
// long to wait between attempts.
type RetryPolicy struct {
	MaxAttempts      int     `json:"max_attempts"`
	InitialBackoffMS int     `json:"initial_backoff_ms"`
	Multiplier       float64 `json:"backoff_multiplier"`
	MaxBackoffMS     int     `json:"max_backoff_ms"`
	// Jitter is a fraction: each wait is drawn from [w(1-j), w(1+j)]. nil: the default.
	Jitter *float64 `json:"jitter"`
}

// Backoff is the wait before retry n (1: the first retry), for r drawn uniformly from
// [0, 1).
func (p *RetryPolicy) Backoff(n int, r float64) time.Duration {
	d := float64(p.InitialBackoffMS) * math.Pow(p.Multiplier, float64(n-1))
	d = math.Min(d, float64(p.MaxBackoffMS))
	if j := p.jitter(); j > 0 {
		d *= 1 - j + 2*j*r
	}
	return time.Duration(d * float64(time.Millisecond))
}

func (p *RetryPolicy) jitter() float64 {
	if p.Jitter == nil {
		return DefaultJitter
	}
	return *p.Jitter
}

// Step is one step of a workflow.
type Step struct {
	ID             string      `json:"step_id"`
	Name           string      `json:"name"`
	Action         string      `json:"action"`
	Compensation   string      `json:"compensation_action"`
	TimeoutSeconds int         `json:"timeout_seconds"`
	Retry          RetryPolicy `json:"retry"`
	// Input is a JSON object (or nil): fixed parameters laid over the context to make
	// the action's input.
	Input json.RawMessage `json:"input,omitempty"`
}

// Timeout is the step's attempt timeout.
func (s *Step) Timeout() time.Duration { return time.Duration(s.TimeoutSeconds) * time.Second }

// Definition is a workflow definition (the guide's WorkflowDefinition).
type Definition struct {
	WorkflowID         string `json:"workflow_id"`
	Name               string `json:"name"`
	Description        string `json:"description"`
	Steps              []Step `json:"steps"`
	EnableCompensation bool   `json:"enable_compensation"`
	// Version is the stored version (not part of the definition's JSON).
	Version int32 `json:"-"`
}

// Normalize checks d and fills in its defaults. The error is a *validate.Error naming
// the field (prefixed "workflow.") and what is wrong with it.
func (d *Definition) Normalize() error {
	if err := validate.Name("workflow.workflow_id", d.WorkflowID, MaxIDLen, true); err != nil {
		return err
	}
	if err := validate.Text("workflow.name", d.Name, MaxNameLen); err != nil {
		return err
	}
	if err := checkText("workflow.description", d.Description, MaxDescriptionLen); err != nil {
		return err
	}
	if len(d.Steps) == 0 {
		return validate.Errorf("workflow.steps", "has no steps: a workflow needs at least one")
	}
	if len(d.Steps) > MaxSteps {
		return validate.Errorf("workflow.steps", "has %d steps, over the limit of %d", len(d.Steps), MaxSteps)
	}
	seen := make(map[string]int, len(d.Steps))
	for i := range d.Steps {
		f := "workflow.steps[" + strconv.Itoa(i) + "]"
		s := &d.Steps[i]
		if err := validate.Name(f+".step_id", s.ID, MaxIDLen, true); err != nil {
			return err
		}
		if j, dup := seen[s.ID]; dup {
			return validate.Errorf(f+".step_id", "repeats the step id of steps[%d]: step ids must be unique", j)
		}
		seen[s.ID] = i
		if err := validate.Text(f+".name", s.Name, MaxNameLen); err != nil {
			return err
		}
		if s.Action == "" {
			return validate.Errorf(f+".action", "is empty: every step needs the action a worker runs")
		}
		if err := validate.Name(f+".action", s.Action, MaxIDLen, true); err != nil {
			return err
		}
		if err := validate.Name(f+".compensation_action", s.Compensation, MaxIDLen, false); err != nil {
			return err
		}
		switch {
		case s.TimeoutSeconds < 0:
			return validate.Errorf(f+".timeout_seconds", "is negative: give seconds between 1 and %d (0: the default, %d)", MaxTimeoutSeconds, DefaultTimeoutSeconds)
		case s.TimeoutSeconds > MaxTimeoutSeconds:
			return validate.Errorf(f+".timeout_seconds", "is over the limit of %d", MaxTimeoutSeconds)
		case s.TimeoutSeconds == 0:
			s.TimeoutSeconds = DefaultTimeoutSeconds
		}
		if err := s.Retry.normalize(f + ".retry"); err != nil {
			return err
		}
		if len(s.Input) > 0 {
			if err := CheckObject(f+".input", s.Input); err != nil {
				return err
			}
			if bytes.Equal(s.Input, []byte("{}")) {
				s.Input = nil
			}
		}
	}
	return nil
}

func (p *RetryPolicy) normalize(f string) error {
	switch {
	case p.MaxAttempts < 0 || p.MaxAttempts > MaxAttempts:
		return validate.Errorf(f+".max_attempts", "must be between 1 and %d (0: the default, %d)", MaxAttempts, DefaultMaxAttempts)
	case p.MaxAttempts == 0:
		p.MaxAttempts = DefaultMaxAttempts
	}
	switch {
	case p.InitialBackoffMS < 0 || p.InitialBackoffMS > MaxBackoffMS:
		return validate.Errorf(f+".initial_backoff_ms", "must be between 1 and %d (0: the default, %d)", MaxBackoffMS, DefaultInitialBackoffMS)
	case p.InitialBackoffMS == 0:
		p.InitialBackoffMS = DefaultInitialBackoffMS
	}
	switch {
	case math.IsNaN(p.Multiplier) || p.Multiplier < 0 || (p.Multiplier > 0 && p.Multiplier < 1) || p.Multiplier > MaxMultiplier:
		return validate.Errorf(f+".backoff_multiplier", "must be between 1 and %g (0: the default, %g)", MaxMultiplier, DefaultMultiplier)
	case p.Multiplier == 0:
		p.Multiplier = DefaultMultiplier
	}
	switch {
	case p.MaxBackoffMS < 0 || p.MaxBackoffMS > MaxBackoffMS:
		return validate.Errorf(f+".max_backoff_ms", "must be between initial_backoff_ms and %d (0: the default, %d)", MaxBackoffMS, DefaultMaxBackoffMS)
	case p.MaxBackoffMS == 0:
		p.MaxBackoffMS = max(DefaultMaxBackoffMS, p.InitialBackoffMS)
	case p.MaxBackoffMS < p.InitialBackoffMS:
		return validate.Errorf(f+".max_backoff_ms", "is below initial_backoff_ms (%d)", p.InitialBackoffMS)
	}
	if p.Jitter == nil {
		j := DefaultJitter
		p.Jitter = &j
	} else if j := *p.Jitter; math.IsNaN(j) || j < 0 || j > 1 {
		return validate.Errorf(f+".jitter", "must be between 0 and 1")
	}
	return nil
}

// Text checks free text of a saga request (a description, an idempotency key, a cancel
// reason, a worker's error message): at most maxBytes bytes of valid UTF-8 without
// control characters (multiline: line breaks and tabs allowed). PostgreSQL refuses
// invalid UTF-8 and U+0000 in text columns, so what passes here can be stored and read
// back. The error names the rule, never the text.
func Text(field, s string, maxBytes int, multiline bool) error {
	if len(s) > maxBytes {
		return validate.Errorf(field, "is longer than %d bytes", maxBytes)
	}
	ascii := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 0x20 && !(multiline && (c == '\n' || c == '\r' || c == '\t'))) || c == 0x7f {
			return validate.Errorf(field, "must not contain control characters")
		}
		ascii = ascii && c < utf8.RuneSelf
	}
	if !ascii && !utf8.ValidString(s) {
		return validate.Errorf(field, "must be valid UTF-8")
	}
	return nil
}

// checkText is Text that allows line breaks and tabs.
func checkText(field, s string, maxLen int) error { return Text(field, s, maxLen, true) }

// Canonical is d's stored form (JSON with its defaults filled in) and its digest: two
// definitions with the same digest are identical. Call it after Normalize.
func (d *Definition) Canonical() (data, digest []byte, err error) {
	// Inputs are re-encoded so that key order and spacing do not make a difference.
	c := *d
	c.Steps = make([]Step, len(d.Steps))
	copy(c.Steps, d.Steps)
	for i := range c.Steps {
		if in := c.Steps[i].Input; len(in) > 0 {
			// Numbers as written (json.Number): a float64 would round large integers.
			var m map[string]any
			dec := json.NewDecoder(bytes.NewReader(in))
			dec.UseNumber()
			if err := dec.Decode(&m); err != nil || m == nil {
				return nil, nil, validate.Errorf("workflow.steps["+strconv.Itoa(i)+"].input", "must be a JSON object")
			}
			if c.Steps[i].Input, err = json.Marshal(m); err != nil {
				return nil, nil, err
			}
		}
	}
	data, err = json.Marshal(&c)
	if err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256(data)
	return data, sum[:], nil
}

// ParseDefinition decodes a stored definition.
func ParseDefinition(data []byte, version int32) (*Definition, error) {
	d := &Definition{Version: version}
	if err := json.Unmarshal(data, d); err != nil {
		return nil, err
	}
	return d, nil
}

// CheckObject checks that b is a JSON object of at most MaxContextBytes within the
// rules of stored JSON (validate.JSONObject: nesting, numbers, UTF-8, no repeated key),
// so that every reader (GetSaga, PollTasks as Structs, the saga events) can give it back.
func CheckObject(field string, b []byte) error {
	if len(b) > MaxContextBytes {
		return validate.Errorf(field, "is %d bytes as JSON, over the limit of %d", len(b), MaxContextBytes)
	}
	return validate.JSONObject(field, b)
}

func checkObject(field string, b []byte) error { return CheckObject(field, b) }
