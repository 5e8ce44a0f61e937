package store

import (
	"fmt"

	"github.com/valyala/fastjson"
)

// FoldJSON folds l into its current state, as JSON: the snapshot's state, then each
// event's data applied as an RFC 7386 merge patch. A state that ends up not being an
// object is {}. Values are spliced as parsed, so numbers keep their exact text (no
// float64 round trip) and nothing is decoded into Go maps.
func FoldJSON(l *Loaded) ([]byte, error) {
	var a fastjson.Arena
	state := a.NewObject()
	// Merged values point into the parsers' buffers, so both parsers live until the
	// state is written out. The tail is parsed as one array: one parser, one buffer.
	var sp, tp fastjson.Parser
	if l.Snapshot != nil {
		v, err := sp.ParseBytes(l.Snapshot.State)
		if err != nil {
			return nil, fmt.Errorf("snapshot state: %w", err)
		}
		state = v
	}
	if len(l.Tail) > 0 {
		n := 2
		for i := range l.Tail {
			n += len(l.Tail[i].Data) + 1
		}
		all := make([]byte, 0, n)
		all = append(all, '[')
		for i := range l.Tail {
			if i > 0 {
				all = append(all, ',')
			}
			all = append(all, l.Tail[i].Data...)
		}
		all = append(all, ']')
		v, err := tp.ParseBytes(all)
		if err != nil {
			return nil, malformedEvent(l.Tail, err)
		}
		patches := v.GetArray()
		if len(patches) != len(l.Tail) { // an event's data held more than one value
			return nil, malformedEvent(l.Tail, fmt.Errorf("%d values in %d events", len(patches), len(l.Tail)))
		}
		for _, p := range patches {
			state = mergePatch(&a, state, p)
		}
	}
	if state.Type() != fastjson.TypeObject {
		return []byte("{}"), nil
	}
	return state.MarshalTo(nil), nil
}

// malformedEvent names the first event whose data is not one JSON value.
func malformedEvent(tail []StoredEvent, err error) error {
	var p fastjson.Parser
	for i := range tail {
		if _, perr := p.ParseBytes(tail[i].Data); perr != nil {
			return fmt.Errorf("event %s data: %w", tail[i].EventID, perr)
		}
	}
	return fmt.Errorf("events data: %w", err)
}

// mergePatch merges patch into target (changing target in place when it is an object)
// and returns the result. target may be nil (absent).
func mergePatch(a *fastjson.Arena, target, patch *fastjson.Value) *fastjson.Value {
	if patch.Type() != fastjson.TypeObject {
		return patch // not an object: it replaces the target
	}
	if target == nil || target.Type() != fastjson.TypeObject {
		target = a.NewObject()
	}
	po, to := patch.GetObject(), target.GetObject()
	po.Visit(func(k []byte, v *fastjson.Value) {
		key := string(k)
		if v.Type() == fastjson.TypeNull {
			to.Del(key)
			return
		}
		to.Set(key, mergePatch(a, to.Get(key), v))
	})
	return target
}
