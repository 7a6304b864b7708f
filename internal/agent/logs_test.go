package agent

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"berth/api"
	"berth/internal/runtime"
	"berth/internal/runtime/fake"
)

// stampedRuntime is the fake engine with a log that keeps the engine's
// time of each line, as Docker's does: Logs honours tail, Since and
// Timestamps.
// As for a stopped container, a stream ends after the lines present.
type stampedRuntime struct {
	*fake.Runtime
	mu    sync.Mutex
	at    time.Time
	lines []stamped
}

type stamped struct {
	at   time.Time
	text string
}

func (r *stampedRuntime) say(texts ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range texts {
		r.at = r.at.Add(time.Nanosecond)
		if now := time.Now(); now.After(r.at) {
			r.at = now // the engine's clock is the host's
		}
		r.lines = append(r.lines, stamped{r.at, t})
	}
}

func (r *stampedRuntime) Logs(ctx context.Context, id string, follow bool, tail int, opts ...runtime.LogOptions) (io.ReadCloser, error) {
	if _, err := r.Inspect(ctx, id); err != nil {
		return nil, err
	}
	var o runtime.LogOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	lines := r.lines
	if tail >= 0 && tail < len(lines) {
		lines = lines[len(lines)-tail:]
	}
	var b strings.Builder
	for _, l := range lines {
		if l.at.Before(o.Since) {
			continue
		}
		if o.Timestamps {
			b.WriteString(l.at.Format(time.RFC3339Nano) + " ")
		}
		b.WriteString(l.text + "\n")
	}
	return io.NopCloser(strings.NewReader(b.String())), nil
}

// A follow goes on after its stream ends: through the engine's stream
// breaking while the container runs and through a restart, each line once,
// and ends when the container is removed.
func TestInstanceLogsFollowsRestarts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rt, id := startStamped(t, ctx)
	rt.say("run 1 a", "run 1 b")
	sc, next, got := followLines(t, ctx, rt, id, -1)
	next("run 1 a")
	next("run 1 b")
	rt.say("run 1 c") // after the stream ended, the container still running
	next("run 1 c")

	rt.Kill(id, 137)
	rt.say("run 2 a")
	if err := rt.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	next("run 2 a")

	if err := rt.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	for sc.Scan() {
		*got = append(*got, sc.Text())
	}
	if want := []string{"run 1 a", "run 1 b", "run 1 c", "run 2 a"}; !slices.Equal(*got, want) || sc.Err() != nil {
		t.Fatalf("lines %q (%v), want %q and the end of the follow", *got, sc.Err(), want)
	}
}

// A follow with tail 0 shows no line from before it began, after a restart
// either, even when the container said nothing meanwhile.
func TestInstanceLogsFollowTail0(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rt, id := startStamped(t, ctx)
	rt.say("old a", "old b")
	sc, next, got := followLines(t, ctx, rt, id, 0)
	rt.Kill(id, 137)
	rt.say("new")
	if err := rt.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	next("new")
	if err := rt.Remove(ctx, id); err != nil {
		t.Fatal(err)
	}
	for sc.Scan() {
		*got = append(*got, sc.Text())
	}
	if !slices.Equal(*got, []string{"new"}) {
		t.Fatalf("lines %q, want only the one said after the follow began", *got)
	}
}

// startStamped runs one container of instance web-1 on a stampedRuntime.
func startStamped(t *testing.T, ctx context.Context) (*stampedRuntime, string) {
	t.Helper()
	rt := &stampedRuntime{Runtime: fake.New()}
	id, err := rt.Create(ctx, runtime.ContainerSpec{Name: "web-1", Image: "x",
		Labels: map[string]string{runtime.LabelInstance: "web-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	return rt, id
}

// followLines follows the container's log through an agent; next reads a
// line and fails the test unless it is want; got holds the lines read.
func followLines(t *testing.T, ctx context.Context, rt runtime.Runtime, id string, tail int) (*bufio.Scanner, func(want string), *[]string) {
	t.Helper()
	a := &Agent{Runtime: rt, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	rc, err := a.InstanceLogs(ctx, api.Instance{Name: "web-1", Status: api.Status{ContainerID: id}}, true, tail)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	sc := bufio.NewScanner(rc)
	got := &[]string{}
	next := func(want string) {
		t.Helper()
		if !sc.Scan() {
			t.Fatalf("the follow ended (%v) after %q; want %q", sc.Err(), *got, want)
		}
		if *got = append(*got, sc.Text()); sc.Text() != want {
			t.Fatalf("lines %q, want %q last", *got, want)
		}
	}
	return sc, next, got
}
