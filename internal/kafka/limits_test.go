package kafka

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"go.uber.org/zap"
)

// Event types are the callers' to choose: the router remembers at most its limit of
// them, and routes the others all the same.
func TestRouterCacheIsBounded(t *testing.T) {
	r := NewRouter("healthtech", nil)
	r.SetCacheLimit(50)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				typ := fmt.Sprintf("d%d.t%d", i%7, g*1000+i)
				if got, want := r.Topic(typ), fmt.Sprintf("healthtech.d%d.events", i%7); got != want {
					t.Errorf("Topic(%q) = %q, want %q", typ, got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	n := 0
	r.cache.Range(func(any, any) bool { n++; return true })
	if n != 50 || r.cached.Load() != 50 {
		t.Errorf("router cache holds %d event types (counted %d), want its limit 50", n, r.cached.Load())
	}
}

// New topics are admitted up to MaxTopics; topics already admitted always are.
func TestTopicsAdmitIsBounded(t *testing.T) {
	s := DefaultTopicSettings()
	s.MaxTopics = 3
	tp := NewDetachedTopics(s, zap.NewNop())
	var wg sync.WaitGroup
	var mu sync.Mutex
	admitted := map[string]bool{}
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := fmt.Sprintf("healthtech.d%d.events", i)
			err := tp.Admit(topic)
			var te *TooManyTopicsError
			switch {
			case err == nil:
				mu.Lock()
				admitted[topic] = true
				mu.Unlock()
			case !errors.As(err, &te) || te.Max != 3 || te.Topic != topic:
				t.Errorf("Admit(%s): %v", topic, err)
			}
		}()
	}
	wg.Wait()
	if len(admitted) != 3 {
		t.Fatalf("%d topics admitted, want 3", len(admitted))
	}
	for topic := range admitted {
		if err := tp.Admit(topic); err != nil {
			t.Errorf("an admitted topic is refused again: %v", err)
		}
	}
}
