package kafka

import (
	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kgo"
)

// NewJavaCompatiblePartitioner places a keyed record where Kafka's Java client (and
// librdkafka's murmur2_random, Kafka Streams, ksqlDB) would: murmur2 of the key, high
// bit cleared, modulo the partition count. sarama's default hash (FNV-1a) would put a
// tenant's events on another partition than a Java producer or a co-partitioned stream
// join expects. The hashing is franz-go's reference implementation.
func NewJavaCompatiblePartitioner(string) sarama.Partitioner {
	return &javaPartitioner{tp: kgo.StickyKeyPartitioner(nil).ForTopic(""), fallback: sarama.NewRandomPartitioner("")}
}

// javaPartitioner is used by its topic's single producer goroutine (sarama builds one
// per topic), so it can reuse rec.
type javaPartitioner struct {
	tp       kgo.TopicPartitioner
	fallback sarama.Partitioner
	rec      kgo.Record
}

func (p *javaPartitioner) Partition(m *sarama.ProducerMessage, n int32) (int32, error) {
	if m.Key == nil {
		return p.fallback.Partition(m, n)
	}
	key, err := m.Key.Encode()
	if err != nil {
		return -1, err
	}
	p.rec.Key = key
	part := p.tp.Partition(&p.rec, int(n))
	p.rec.Key = nil
	return int32(part), nil
}

// RequiresConsistency: a key always maps to the same partition (sarama must not
// re-partition a message when retrying).
func (*javaPartitioner) RequiresConsistency() bool { return true }
