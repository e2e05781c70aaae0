package plugin

import (
	"io"
	"log/syslog"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// NewLogger logs to syslog (identifier "sanvol", everything from debug up
// when verbose, info otherwise) and to stderr from warning up. It never
// writes to stdout: stdout belongs to the one JSON value of the contract.
// A host without a syslog socket (the lab, CI) still gets stderr.
func NewLogger(stderr io.Writer, verbose bool) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "" // syslog and xapi's log add their own timestamps
	cores := []zapcore.Core{
		zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(stderr), zapcore.WarnLevel),
	}
	level := zapcore.InfoLevel
	if verbose {
		level = zapcore.DebugLevel
	}
	if w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "sanvol"); err == nil {
		cores = append(cores, zapcore.NewCore(zapcore.NewJSONEncoder(enc), &syslogSink{w: w}, level))
	}
	return zap.New(zapcore.NewTee(cores...))
}

// syslogSink sends every encoded entry as one syslog message.
type syslogSink struct{ w *syslog.Writer }

func (s *syslogSink) Write(p []byte) (int, error) {
	if err := s.w.Info(string(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *syslogSink) Sync() error { return nil }
