package registry

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
)

// records is a slog handler that keeps what it is given.
type records struct {
	mu   sync.Mutex
	msgs []string // "LEVEL message status=..."
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	line := rec.Level.String() + " " + rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "http.response.status" {
			line += " status=" + a.Value.String()
		}
		return true
	})
	r.mu.Lock()
	r.msgs = append(r.msgs, line)
	r.mu.Unlock()
	return nil
}

func (r *records) has(line string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if strings.HasPrefix(m, line) {
			return true
		}
	}
	return false
}

// Distribution logs to berth's slog logger, and logrus's process-wide
// standard logger neither writes nor is reconfigured.
func TestLogsGoToSlog(t *testing.T) {
	std := logrus.StandardLogger()
	var global bytes.Buffer
	out, level, formatter := std.Out, std.GetLevel(), std.Formatter
	std.SetOutput(&global)
	defer std.SetOutput(out)

	rec := &records{}
	srv := serve(t, t.TempDir(), tokens, slog.New(rec))
	pushImage(t, srv.URL, "logged", "1", "bearer:"+userToken)
	wantStatus(t, call(t, "GET", srv.URL+"/v2/logged/manifests/2", "bearer:"+userToken, nil), http.StatusNotFound)

	if !rec.has("DEBUG response completed status=201") {
		t.Errorf("no debug record of a completed push request; got %q", rec.msgs)
	}
	// A 404 is a client's error, not the registry's.
	if !rec.has("DEBUG response completed with error status=404") {
		t.Errorf("no debug record of the 404; got %q", rec.msgs)
	}
	if global.Len() > 0 {
		t.Errorf("Distribution wrote to logrus's standard logger: %s", global.String())
	}
	if std.GetLevel() != level || std.Formatter != formatter {
		t.Error("Distribution reconfigured logrus's standard logger")
	}
}

func TestSlogLevels(t *testing.T) {
	for _, c := range []struct {
		level  logrus.Level
		status any
		want   slog.Level
	}{
		{logrus.ErrorLevel, 500, slog.LevelError},
		{logrus.ErrorLevel, nil, slog.LevelError},
		{logrus.ErrorLevel, 404, slog.LevelDebug},
		{logrus.WarnLevel, nil, slog.LevelWarn},
		{logrus.InfoLevel, 200, slog.LevelDebug},
	} {
		e := &logrus.Entry{Level: c.level, Data: logrus.Fields{}}
		if c.status != nil {
			e.Data["http.response.status"] = c.status
		}
		if got := slogLevel(e); got != c.want {
			t.Errorf("logrus %s status %v: slog %s, want %s", c.level, c.status, got, c.want)
		}
	}
}
