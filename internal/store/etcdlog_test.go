package store

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// etcd's clean-shutdown warnings (a closed listener) are left out of
// berth's log; the same messages with another error, and other warnings,
// are kept.
func TestEtcdLoggerQuietsCleanShutdown(t *testing.T) {
	var buf bytes.Buffer
	lg := etcdLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	closed := errors.New("accept tcp 127.0.0.1:43577: use of closed network connection")
	lg.Warn("stopping insecure grpc server due to error", zap.Error(closed))
	lg.Warn("stopped insecure grpc server due to error", zap.Error(closed))
	lg.Error("setting up serving from embedded etcd failed.", zap.Error(errors.New("mux: server closed")))
	lg.Warn("simple token is not cryptographically signed")
	if buf.Len() != 0 {
		t.Errorf("clean-shutdown warnings were logged:\n%s", buf.String())
	}

	lg.Warn("stopped insecure grpc server due to error", zap.Error(errors.New("tls: bad certificate")))
	lg.Warn("slow fdatasync", zap.Duration("took", 2e9))
	out := buf.String()
	for _, want := range []string{"level=WARN msg=\"stopped insecure grpc server due to error\"", "tls: bad certificate", "slow fdatasync", "component=etcd"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}
