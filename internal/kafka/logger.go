package kafka

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/IBM/sarama"
	"go.uber.org/zap"
)

// sarama logs through one package-level logger. It is installed once and forwards to
// the zap logger of the latest BridgeLogger call, so that building a second gateway in
// one process (tests) never writes the global while sarama goroutines read it.
var (
	bridgeOnce sync.Once
	bridged    atomic.Pointer[zap.Logger]
)

type saramaBridge struct{}

func (saramaBridge) log(s string) {
	if l := bridged.Load(); l != nil {
		if ce := l.Check(zap.DebugLevel, strings.TrimSpace(s)); ce != nil {
			ce.Write()
		}
	}
}

func (b saramaBridge) Print(v ...any)                 { b.log(fmt.Sprint(v...)) }
func (b saramaBridge) Printf(format string, v ...any) { b.log(fmt.Sprintf(format, v...)) }
func (b saramaBridge) Println(v ...any)               { b.log(fmt.Sprintln(v...)) }

// BridgeLogger sends sarama's log lines (connection and metadata chatter, no event
// data) to log at debug level.
func BridgeLogger(log *zap.Logger) {
	bridged.Store(log.Named("sarama"))
	bridgeOnce.Do(func() { sarama.Logger = saramaBridge{} })
}
