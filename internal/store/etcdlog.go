package store

import (
	"context"
	"log/slog"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcdLogger sends embedded etcd's warnings and errors to berth's log,
// leaving out the closed-listener errors etcd logs on every normal
// shutdown (and two notes of every start).
func etcdLogger(log *slog.Logger) *zap.Logger {
	return zap.New(&slogCore{log: log.With("component", "etcd")})
}

// quietEtcdMessages are logged by etcd on every normal start of a single
// embedded member and say nothing to a berth user.
var quietEtcdMessages = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"simple token is not cryptographically signed":                                         true, // etcd auth is off; berth has its own tokens
}

// shutdownEtcdMessages are logged by etcd when its listeners close. At a
// clean shutdown their error is a closed listener; any other error is
// news and is logged.
var shutdownEtcdMessages = map[string]bool{
	"setting up serving from embedded etcd failed.": true,
	"stopping insecure grpc server due to error":    true,
	"stopped insecure grpc server due to error":     true,
}

// closedListener are the errors of a listener closed on purpose.
var closedListener = []string{"use of closed network connection", "mux: server closed", "http: Server closed"}

// quietEtcd reports whether an etcd log entry is one a clean start or stop
// always makes.
func quietEtcd(msg string, fields map[string]any) bool {
	if quietEtcdMessages[msg] {
		return true
	}
	if !shutdownEtcdMessages[msg] {
		return false
	}
	err, _ := fields["error"].(string)
	for _, c := range closedListener {
		if strings.Contains(err, c) {
			return true
		}
	}
	return false
}

type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel }

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, fields: append(append([]zapcore.Field{}, c.fields...), fields...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(c.fields, fields...) {
		f.AddTo(enc)
	}
	if quietEtcd(e.Message, enc.Fields) {
		return nil
	}
	attrs := make([]any, 0, 2*len(enc.Fields))
	for k, v := range enc.Fields {
		attrs = append(attrs, k, v)
	}
	level := slog.LevelWarn
	if e.Level >= zapcore.ErrorLevel {
		level = slog.LevelError
	}
	c.log.Log(context.Background(), level, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
