package subscribe

import (
	"encoding/base64"
	"math/bits"
	"strings"

	"github.com/IBM/sarama"
)

// Finished offsets above the committed one travel in the offset commit's metadata, as
// Confluent's parallel-consumer does: with key ordering, events after an unacknowledged
// one are often acknowledged first, and a Kafka offset alone cannot say so. The next
// owner of the partition reads the metadata and skips what was already finished, so a
// rebalance redelivers only what was in flight.
//
// Format: "eg1:" + base64url(bitset), bit i set when offset committed+i is finished.
const aheadPrefix = "eg1:"

// maxAheadBytes keeps the metadata under Kafka's offset.metadata.max.bytes (4096).
const maxAheadBytes = 3000

// aheadMetadata encodes the finished records of p beyond its commit point: those it
// finished, and those the previous owner finished that it has not read yet (their
// only record is the metadata this commit replaces).
func aheadMetadata(p *partition) string {
	if p.doneAhead == 0 && p.skip == nil {
		return ""
	}
	var bits []byte
	set := func(offset int64) {
		i := offset - p.next
		if i < 0 || i >= maxAheadBytes*8 {
			return
		}
		for int64(len(bits)) <= i/8 {
			bits = append(bits, 0)
		}
		bits[i/8] |= 1 << (i % 8)
	}
	for _, m := range p.pending[p.head:] {
		if m.state == stDone {
			set(m.rec.Offset)
		}
	}
	if s := p.skip; s != nil {
		for i, b := range s.bits {
			for j := range 8 {
				if b&(1<<j) != 0 {
					set(s.base + int64(i)*8 + int64(j))
				}
			}
		}
	}
	if len(bits) == 0 {
		return ""
	}
	return aheadPrefix + base64.RawURLEncoding.EncodeToString(bits)
}

// skipSet is what a previous owner finished beyond the committed offset.
type skipSet struct {
	base int64
	bits []byte
}

func parseAhead(committed int64, meta string) *skipSet {
	rest, ok := strings.CutPrefix(meta, aheadPrefix)
	if !ok || committed < 0 {
		return nil
	}
	bits, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(bits) == 0 {
		return nil
	}
	return &skipSet{base: committed, bits: bits}
}

func (s *skipSet) has(offset int64) bool {
	i := offset - s.base
	return i >= 0 && i < int64(len(s.bits))*8 && s.bits[i/8]&(1<<(i%8)) != 0
}

// count is how many offsets s holds (0 for nil).
func (s *skipSet) count() int {
	if s == nil {
		return 0
	}
	n := 0
	for _, b := range s.bits {
		n += bits.OnesCount8(b)
	}
	return n
}

func (s *skipSet) past(offset int64) bool { return offset-s.base >= int64(len(s.bits))*8 }

// fetchAhead reads the committed offset's metadata of a partition just claimed.
func (st *stream) fetchAhead(topic string, partition int32, initial int64) *skipSet {
	coord, err := st.client.Coordinator(st.opts.Subscription)
	if err != nil {
		return nil
	}
	req := sarama.NewOffsetFetchRequest(st.m.cfg.KafkaVersion, st.opts.Subscription, map[string][]int32{topic: {partition}})
	resp, err := coord.FetchOffset(req)
	if err != nil {
		return nil
	}
	b := resp.GetBlock(topic, partition)
	if b == nil || b.Err != sarama.ErrNoError || b.Offset != initial {
		return nil
	}
	return parseAhead(b.Offset, b.Metadata)
}
