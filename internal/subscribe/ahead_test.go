package subscribe

import (
	"testing"

	"github.com/IBM/sarama"
)

func heldAt(offset int64, done bool) *msg {
	m := &msg{rec: &sarama.ConsumerMessage{Offset: offset}, state: stDelivered}
	if done {
		m.state = stDone
	}
	return m
}

// TestAheadMetadataRoundTrip: what a partition finished beyond its commit point, and
// what the previous owner finished that it has not read yet, reach the next owner.
func TestAheadMetadataRoundTrip(t *testing.T) {
	p := &partition{next: 10}
	if got := aheadMetadata(p); got != "" {
		t.Fatalf("nothing finished ahead: metadata %q, want empty", got)
	}
	// Held: 10 (in flight), 11 finished, 12 in flight, 13 finished.
	p.pending = []*msg{heldAt(10, false), heldAt(11, true), heldAt(12, false), heldAt(13, true)}
	p.doneAhead = 2
	// The previous owner committed 8 and finished 9, 11 and 20 beyond it; this owner
	// has read up to 13, so 20 is known only from that metadata.
	p.skip = &skipSet{base: 8, bits: []byte{0b0000_1010, 0b0001_0000}}
	meta := aheadMetadata(p)
	s := parseAhead(p.next, meta)
	if s == nil {
		t.Fatalf("metadata %q does not parse", meta)
	}
	for off := int64(0); off < 40; off++ {
		want := off == 11 || off == 13 || off == 20
		if s.has(off) != want {
			t.Errorf("offset %d: finished = %v, want %v (metadata %q)", off, s.has(off), want, meta)
		}
	}
}

// TestParseAheadRefusesForeignMetadata: metadata another client committed is not ours
// to read as finished offsets.
func TestParseAheadRefusesForeignMetadata(t *testing.T) {
	for _, meta := range []string{"", "hello", "eg1:", "eg1:!!!", "eg2:AQ"} {
		if s := parseAhead(5, meta); s != nil {
			t.Errorf("parseAhead(%q) = %+v, want nil", meta, s)
		}
	}
	if s := parseAhead(-1, "eg1:AQ"); s != nil {
		t.Errorf("no committed offset: %+v, want nil", s)
	}
}
