package registry

import (
	"context"
	"io"
	"log/slog"
	"reflect"
	"slices"

	"github.com/sirupsen/logrus"
)

// Distribution logs through logrus. It takes its logger from the context
// under a key of its internal dcontext package and falls back to logrus's
// process-wide standard logger; the only public way to give it another
// one (registry.NewRegistry) also resets logrus's global level and
// formatter. So the registry's contexts answer that key themselves
// (logContext), with a private logrus logger that forwards to slog.
// TestLogsGoToSlog fails if a Distribution upgrade moves the key.

// dcontextPkg is the package of Distribution's logger key, loggerKey.
const dcontextPkg = "github.com/distribution/distribution/v3/internal/dcontext"

// logContext is a context whose Distribution logger is logger.
type logContext struct {
	context.Context
	logger *logrus.Entry
}

func (c logContext) Value(key any) any {
	if t := reflect.TypeOf(key); t != nil && t.Name() == "loggerKey" && t.PkgPath() == dcontextPkg {
		return c.logger
	}
	return c.Context.Value(key)
}

// newLogrusEntry is a logrus logger of its own that writes nothing and
// hands every entry to log. Distribution logs each request at info,
// so its info becomes slog's debug.
func newLogrusEntry(log *slog.Logger) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetFormatter(noFormat{})
	l.SetLevel(logrus.WarnLevel)
	if log.Enabled(context.Background(), slog.LevelDebug) {
		l.SetLevel(logrus.DebugLevel)
	}
	l.AddHook(slogHook{log})
	return logrus.NewEntry(l)
}

type noFormat struct{}

func (noFormat) Format(*logrus.Entry) ([]byte, error) { return nil, nil }

type slogHook struct{ log *slog.Logger }

func (slogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h slogHook) Fire(e *logrus.Entry) error {
	level := slogLevel(e)
	ctx := e.Context
	if ctx == nil {
		ctx = context.Background()
	}
	if !h.log.Enabled(ctx, level) {
		return nil
	}
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		v := e.Data[k]
		if err, ok := v.(error); ok {
			v = err.Error()
		}
		attrs = append(attrs, slog.Any(k, v))
	}
	h.log.LogAttrs(ctx, level, e.Message, attrs...)
	return nil
}

// slogLevel maps a logrus level to slog's. Info is debug (a line per
// request), and so is an "error" that is a request answered with a client
// error: a HEAD of a blob not pushed yet, which every push makes.
func slogLevel(e *logrus.Entry) slog.Level {
	switch {
	case e.Level <= logrus.ErrorLevel:
		if s, ok := e.Data["http.response.status"].(int); ok && s < 500 {
			return slog.LevelDebug
		}
		return slog.LevelError
	case e.Level == logrus.WarnLevel:
		return slog.LevelWarn
	}
	return slog.LevelDebug
}
