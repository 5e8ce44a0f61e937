package store

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/valyala/fastjson"
)

// FoldJSON folds l into its current state, as JSON: the snapshot's state, then each
// event's data applied as an RFC 7386 merge patch. A state that ends up not being an
// object is {}. Values are spliced as parsed, so numbers keep their exact text (no
// float64 round trip) and nothing is decoded into Go maps.
//
// Every value PostgreSQL's jsonb holds can be folded: data stored before the write-time
// limits (validate.MaxDepth) may nest deeper than fastjson parses (300 levels), and is
// then folded by encoding/json instead (numbers still kept as written). Only data that
// neither can parse is an *UnfoldableError, which names the event's version, never the
// data.
func FoldJSON(l *Loaded) ([]byte, error) {
	out, err := foldFast(l)
	if err == nil {
		return out, nil
	}
	return foldSlow(l)
}

func foldFast(l *Loaded) ([]byte, error) {
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

// malformedEvent names the first event whose data is not one JSON value. fastjson's
// errors quote the input, so they are dropped here.
func malformedEvent(tail []StoredEvent, _ error) error {
	var p fastjson.Parser
	for i := range tail {
		if _, perr := p.ParseBytes(tail[i].Data); perr != nil {
			return &UnfoldableError{EventID: tail[i].EventID, Version: tail[i].Version}
		}
	}
	return &UnfoldableError{}
}

// foldSlow is FoldJSON with encoding/json (nesting up to 10,000 levels): for data
// fastjson cannot parse. Its output has sorted keys.
func foldSlow(l *Loaded) ([]byte, error) {
	var state any = map[string]any{}
	if l.Snapshot != nil {
		v, err := decodeNumbers(l.Snapshot.State)
		if err != nil {
			return nil, &UnfoldableError{Snapshot: true, Version: l.Snapshot.Version}
		}
		state = v
	}
	for i := range l.Tail {
		p, err := decodeNumbers(l.Tail[i].Data)
		if err != nil {
			return nil, &UnfoldableError{EventID: l.Tail[i].EventID, Version: l.Tail[i].Version}
		}
		state = mergeAny(state, p)
	}
	if _, ok := state.(map[string]any); !ok {
		return []byte("{}"), nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(state); err != nil {
		return nil, &UnfoldableError{}
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

func decodeNumbers(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("more than one value")
	}
	return v, nil
}

// mergeAny is mergePatch on decoded values.
func mergeAny(target, patch any) any {
	po, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	to, ok := target.(map[string]any)
	if !ok {
		to = map[string]any{}
	}
	for k, v := range po {
		if v == nil {
			delete(to, k)
			continue
		}
		to[k] = mergeAny(to[k], v)
	}
	return to
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
