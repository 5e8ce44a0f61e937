package kafka

import (
	"testing"

	"github.com/IBM/sarama"
)

// Keys land where Kafka's Java client puts them: the murmur2 values below are those of
// Kafka's own tests (org.apache.kafka.common.utils.UtilsTest#testMurmur2).
func TestJavaCompatiblePartitioner(t *testing.T) {
	p := NewJavaCompatiblePartitioner("t")
	if !p.RequiresConsistency() {
		t.Error("a key-hashing partitioner must require consistency")
	}
	for _, tc := range []struct {
		key     string
		murmur2 int32
	}{
		{"21", -973932308},
		{"foobar", -790332482},
		{"a-little-bit-long-string", -985981536},
		{"a-little-bit-longer-string", -1486304829},
		{"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
		{"abc", 479470107},
	} {
		for _, n := range []int32{1, 7, 12, 64} {
			want := int32(uint32(tc.murmur2)&0x7fffffff) % n
			got, err := p.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(tc.key)}, n)
			if err != nil || got != want {
				t.Errorf("key %q over %d partitions: %d, %v; Java picks %d", tc.key, n, got, err, want)
			}
		}
	}
	got, err := p.Partition(&sarama.ProducerMessage{}, 12)
	if err != nil || got < 0 || got >= 12 {
		t.Errorf("a record without a key: partition %d, %v", got, err)
	}
}
