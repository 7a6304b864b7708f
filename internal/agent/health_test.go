package agent

import (
	"context"
	"encoding/json"
	"fmt"
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
	if len(reported) != 1 || !reported[0].Healthy || !reported[0].EverHealthy || reported[0].HealthySince.IsZero() || reported[0].State != api.StateRunning {
		t.Fatalf("a container still up: reported %+v, want one healthy running report", reported)
	}
}

// HealthySince is set when an instance turns healthy, kept through other
// changes while it stays healthy, and cleared when it stops being so.
func TestHealthySinceFollowsHealth(t *testing.T) {
	ctx := context.Background()
	var reported []api.Status
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var st api.Status
		_ = json.NewDecoder(r.Body).Decode(&st)
		reported = append(reported, st)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}")
	}))
	defer hs.Close()
	a := &Agent{Client: client.New(hs.URL, "t"), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	l := &local{}
	send := func(change func(*api.Status)) api.Status {
		t.Helper()
		st := l.current()
		change(&st)
		if err := a.report(ctx, "web-1", l, st); err != nil {
			t.Fatal(err)
		}
		return reported[len(reported)-1]
	}
	if st := send(func(st *api.Status) { st.State = api.StateStarting }); !st.HealthySince.IsZero() {
		t.Fatalf("starting: healthy since %s, want zero", st.HealthySince)
	}
	before := time.Now()
	first := send(func(st *api.Status) { st.State, st.Healthy = api.StateRunning, true }).HealthySince
	if first.Before(before.Add(-time.Second)) || first.After(time.Now()) {
		t.Fatalf("turned healthy: healthy since %s, want about now", first)
	}
	if st := send(func(st *api.Status) { st.Restarts = 1 }); !st.HealthySince.Equal(first) {
		t.Fatalf("still healthy: healthy since %s, want %s kept", st.HealthySince, first)
	}
	if st := send(func(st *api.Status) { st.State, st.Healthy = api.StateUnhealthy, false }); !st.HealthySince.IsZero() {
		t.Fatalf("unhealthy: healthy since %s, want zero", st.HealthySince)
	}
	time.Sleep(5 * time.Millisecond)
	if again := send(func(st *api.Status) { st.State, st.Healthy = api.StateRunning, true }).HealthySince; !again.After(first) {
		t.Fatalf("healthy again: healthy since %s, want after %s", again, first)
	}
	// A record from before HealthySince (healthy, no time): set on its next report.
	l = &local{status: api.Status{State: api.StateRunning, Healthy: true}}
	if st := send(func(st *api.Status) {}); st.HealthySince.IsZero() {
		t.Fatal("healthy record without a time: not set on report")
	}
}

// With min_healthy, a rolling update retires an old instance only once a
// new one has been healthy that long, as reported in HealthySince.
func TestRollingUpdateWaitsMinHealthy(t *testing.T) {
	c := newCluster(t)
	c.deploy(spec("web", 2))
	c.waitHealthy("web", 2)
	s := spec("web", 2)
	s.Env = map[string]string{"V": "2"}
	m := api.Duration(time.Second)
	s.Update = &api.Update{MinHealthy: &m}
	began := time.Now()
	c.deploy(s)
	c.waitFor("rolled", func() (bool, string) {
		insts := live(c.instances("web"))
		n := 0
		for _, i := range insts {
			if i.Revision == 2 && i.Ready() && !i.Status.HealthySince.IsZero() {
				n++
			}
		}
		return n == 2 && len(insts) == 2, fmt.Sprintf("%d of %d at revision 2 and healthy", n, len(insts))
	})
	// One new instance at a time, each healthy for 1s before an old one goes.
	if took := time.Since(began); took < 2*time.Second {
		t.Fatalf("rolled in %s, want at least 2s with min_healthy 1s", took)
	}
}
