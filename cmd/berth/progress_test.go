package main

import (
	"strings"
	"testing"
	"time"

	"berth/api"
)

// Progress is any step nearer done; a sick instance replaced again and
// again (an instance retired, a new one made) is none.
func TestProgressNote(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var p progress
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	steps := []struct {
		r        rollout
		progress bool
	}{
		{rollout{want: 3, current: 1, old: 3}, true}, // the first look
		{rollout{want: 3, current: 0, old: 3, stopping: 1}, false},
		{rollout{want: 3, current: 1, old: 3}, false}, // the replacement: as before
		{rollout{want: 3, current: 1, old: 3, stopping: 1}, false},
		{rollout{want: 3, current: 1, healthy: 1, old: 3}, true},
		{rollout{want: 3, current: 2, healthy: 1, old: 2}, true},
		{rollout{want: 3, current: 2, healthy: 1, old: 2, stopping: 1}, false},
		{rollout{want: 5, current: 2, healthy: 1, old: 2}, true}, // scaled meanwhile: start again
	}
	for i, s := range steps {
		before := p.at
		p.note(s.r, at(i))
		if got := p.at != before; got != s.progress {
			t.Errorf("step %d (%+v): progress %v, want %v", i, s.r, got, s.progress)
		}
	}
}

func TestProgressDeadline(t *testing.T) {
	d := func(v time.Duration) *api.Duration { x := api.Duration(v); return &x }
	// The server's update.progress_deadline (default 5m) and 15s, so that
	// its verdict is seen; at least 2m.
	if got := progressDeadline(api.AppSpec{}); got != 5*time.Minute+15*time.Second {
		t.Errorf("without a health check: %s, want the server's 5m and 15s", got)
	}
	quick := api.AppSpec{Health: &api.Health{HTTP: "/", Interval: d(5 * time.Second), Retries: 3, StartPeriod: d(10 * time.Second)},
		Update: &api.Update{ProgressDeadline: d(10 * time.Second)}}
	if got := progressDeadline(quick); got != 2*time.Minute {
		t.Errorf("default health check, progress_deadline 10s: %s, want 2m", got)
	}
	slow := api.AppSpec{Health: &api.Health{HTTP: "/", Interval: d(10 * time.Second), Retries: 3, StartPeriod: d(5 * time.Minute)}}
	if got := progressDeadline(slow); got != 12*time.Minute {
		t.Errorf("start_period 5m, 3 retries every 10s: %s, want twice 6m", got)
	}
}

func TestReplicasLine(t *testing.T) {
	three, five := 3, 5
	app := func(rev int64, n *int) api.App { return api.App{Revision: rev, Spec: api.AppSpec{Replicas: n}} }
	for _, tt := range []struct {
		before, after api.App
		named         bool
		want          string
	}{
		{api.App{}, app(1, &three), true, "3 replicas"},
		{app(4, &five), app(5, &three), true, "replicas 5 -> 3, from the spec"},
		{app(4, &five), app(5, &five), false, "5 replicas, kept: the spec names none"},
		{app(4, &three), app(5, &three), true, "3 replicas"},
	} {
		if got := replicasLine(tt.before, tt.after, tt.named); got != tt.want {
			t.Errorf("replicasLine(%d -> %d, named %v) = %q, want %q", tt.before.Spec.ReplicaCount(), tt.after.Spec.ReplicaCount(), tt.named, got, tt.want)
		}
	}
}

// A rollout held back names the instance and its last error.
func TestAssessNamesTheProblem(t *testing.T) {
	one := 1
	a := api.App{Spec: api.AppSpec{Replicas: &one}, TemplateRevision: 2}
	sick := api.Instance{Name: "web-7", Revision: 2, Desired: api.DesiredRun, Node: "n1", Attempt: 3,
		Status: api.Status{State: api.StateUnhealthy, Error: "health check failed 4 times: GET /healthz: 503"}}
	waiting := api.Instance{Name: "web-8", Revision: 2, Desired: api.DesiredRun, Attempt: 4, NotBefore: time.Now().Add(time.Minute),
		Reason: "replaces web-7, which never became healthy: placed after a backoff of 4s (attempt 4)"}
	r := assess(a, []api.Instance{sick})
	if !strings.Contains(r.problem, "web-7 is unhealthy: health check failed 4 times: GET /healthz: 503") || !strings.Contains(r.problem, "attempt 3") {
		t.Errorf("problem %q", r.problem)
	}
	if r = assess(a, []api.Instance{waiting}); r.failed != "" {
		t.Errorf("an instance in its replacement backoff failed the rollout: %q", r.failed)
	}
	waiting.NotBefore = time.Time{}
	if r = assess(a, []api.Instance{waiting}); !strings.Contains(r.failed, "cannot be placed") {
		t.Errorf("an instance that cannot be placed: failed %q", r.failed)
	}
}
