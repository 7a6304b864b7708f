package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"berth/api"
	"berth/internal/client"
	"berth/internal/runtime"
	"berth/internal/runtime/fake"
)

// TestMain shortens the uptime that makes an instance without a health
// check healthy (5s) so that the tests of this package, most of which
// deploy such instances on the fake runtime, do not each wait for it.
func TestMain(m *testing.M) {
	uncheckedStable = 20 * time.Millisecond
	os.Exit(m.Run())
}

// An instance without a health check must stay up longer after each
// crash in a row, so that a crash loop never counts as healthy.
func TestUncheckedUptimeGrowsWithCrashes(t *testing.T) {
	defer func(d time.Duration) { uncheckedStable = d }(uncheckedStable)
	uncheckedStable = 5 * time.Second
	for crashes, want := range []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, time.Minute, time.Minute} {
		if got := uncheckedUptime(crashes); got != want {
			t.Errorf("uncheckedUptime(%d) = %s, want %s", crashes, got, want)
		}
	}
	if got := uncheckedUptime(1000); got != time.Minute {
		t.Errorf("uncheckedUptime(1000) = %s, want the cap of 1m", got)
	}
}

// watchUnchecked reports an instance without a health check healthy (and
// ever healthy) only when its container is still the same run once the
// uptime has passed; one that exited meanwhile is not reported at all.
func TestUncheckedHealthNeedsTheSameRun(t *testing.T) {
	ctx := context.Background()
	rt := fake.New()
	var reported []api.Status
	var mu sync.Mutex
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var st api.Status
		_ = json.NewDecoder(r.Body).Decode(&st)
		mu.Lock()
		reported = append(reported, st)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}")
	}))
	defer hs.Close()
	a := &Agent{Runtime: rt, Client: client.New(hs.URL, "t"), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	inst := api.Instance{Name: "web-1", App: "web", Spec: api.AppSpec{Name: "web", Image: "img:1"}}
	run := func(name string) runtime.Container {
		id, err := rt.Create(ctx, runtime.ContainerSpec{Name: name, Image: "img:1"})
		if err != nil {
			t.Fatal(err)
		}
		if err := rt.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
		c, err := rt.Inspect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	gone := run("gone")
	rt.Kill(gone.ID, 137)
	l := &local{probeFor: gone.ID}
	a.watchUnchecked(ctx, inst, l, gone.ID, gone.StartedAt, 0, false)
	if len(reported) != 0 {
		t.Fatalf("a container that exited was reported: %+v", reported)
	}

	up := run("up")
	l = &local{probeFor: up.ID, status: api.Status{State: api.StateStarting, ContainerID: up.ID, StartedAt: up.StartedAt}}
	a.watchUnchecked(ctx, inst, l, up.ID, up.StartedAt, 0, false)
	if len(reported) != 1 || !reported[0].Healthy || !reported[0].EverHealthy || reported[0].State != api.StateRunning {
		t.Fatalf("a container still up: reported %+v, want one healthy running report", reported)
	}
}
