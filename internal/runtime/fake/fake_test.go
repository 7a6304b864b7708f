package fake

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"berth/internal/runtime"
)

func TestLifecycle(t *testing.T) {
	ctx := t.Context()
	r := New()
	app := map[string]string{runtime.LabelApp: "hello"}
	evs, errs := r.Events(ctx, app)

	id, err := r.Create(ctx, runtime.ContainerSpec{Name: "hello-1", Image: "img:1", Port: 8080, Labels: app})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create(ctx, runtime.ContainerSpec{Name: "hello-1", Image: "img:1"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate name: %v", err)
	}
	other, _ := r.Create(ctx, runtime.ContainerSpec{Name: "other", Image: "img:1", Port: 80})
	for _, id := range []string{id, other} {
		if err := r.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	expect(t, evs, id, "start")

	c, err := r.Inspect(ctx, "hello-1")
	if err != nil || !c.Running || c.HostPort != FirstHostPort || c.ID != id || c.StartedAt.IsZero() {
		t.Fatalf("inspect = %+v, %v", c, err)
	}
	if c, _ := r.Inspect(ctx, other); c.HostPort != FirstHostPort+1 {
		t.Fatalf("second host port = %d", c.HostPort)
	}
	if list, _ := r.List(ctx, app); len(list) != 1 || list[0].ID != id {
		t.Fatalf("List(app) = %+v", list)
	}
	if list, _ := r.List(ctx, nil); len(list) != 2 || list[0].ID != other {
		t.Fatalf("List(nil) = %+v, want newest first", list)
	}

	r.SetExec(func(_ string, cmd []string) int { return len(cmd) })
	if code, err := r.Exec(ctx, id, []string{"a", "b", "c"}); code != 3 || err != nil {
		t.Fatalf("exec = %d, %v", code, err)
	}

	r.Log(id, "one", "two", "three")
	rc, _ := r.Logs(ctx, id, false, 2)
	if b, _ := io.ReadAll(rc); string(b) != "two\nthree\n" {
		t.Fatalf("logs = %q", b)
	}

	r.Kill(id, 2)
	expect(t, evs, id, "die")
	if c, _ := r.Inspect(ctx, id); c.Running || c.ExitCode != 2 || c.HostPort != 0 {
		t.Fatalf("after kill: %+v", c)
	}
	if got := r.Running(); len(got) != 1 || got[0].ID != other {
		t.Fatalf("Running = %+v", got)
	}
	if _, err := r.Exec(ctx, id, []string{"x"}); err == nil {
		t.Fatal("exec in stopped container succeeded")
	}

	for range 2 {
		if err := r.Remove(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	expect(t, evs, id, "destroy")
	if _, err := r.Inspect(ctx, id); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("inspect removed: %v", err)
	}

	r.BreakEvents(errors.New("boom"))
	if err := <-errs; err == nil || err.Error() != "boom" {
		t.Fatalf("errs = %v", err)
	}
	if _, ok := <-evs; ok {
		t.Fatal("events not closed after break")
	}
}

func TestImages(t *testing.T) {
	ctx := t.Context()
	r := New()
	if err := r.EnsureImage(ctx, "anything:1"); err != nil {
		t.Fatal(err)
	}
	r.SetImages("img:1")
	if err := r.EnsureImage(ctx, "img:1"); err != nil {
		t.Fatal(err)
	}
	if err := r.EnsureImage(ctx, "img:2"); !errors.Is(err, runtime.ErrImageNotFound) {
		t.Fatalf("missing image: %v", err)
	}
	if _, err := r.Create(ctx, runtime.ContainerSpec{Name: "x", Image: "img:2"}); !errors.Is(err, runtime.ErrImageNotFound) {
		t.Fatalf("create with missing image: %v", err)
	}
}

func TestEventsFanOutAndClose(t *testing.T) {
	r := New()
	ctx, cancel := context.WithCancel(t.Context())
	a, _ := r.Events(ctx, nil)
	b, errsB := r.Events(ctx, nil)

	// Many events with nobody reading yet: they are queued, not dropped.
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			id, _ := r.Create(t.Context(), runtime.ContainerSpec{Image: "i"})
			r.Start(t.Context(), id)
			r.Kill(id, 1)
		})
	}
	wg.Wait()
	for _, ch := range []<-chan runtime.Event{a, b} {
		for range 20 {
			select {
			case <-ch:
			case <-time.After(5 * time.Second):
				t.Fatal("missing event")
			}
		}
	}
	cancel()
	for range a {
	}
	if _, ok := <-errsB; ok {
		t.Fatal("errs yielded after ctx end")
	}
}

func expect(t *testing.T, evs <-chan runtime.Event, id, action string) {
	t.Helper()
	select {
	case ev := <-evs:
		if ev.ContainerID != id || ev.Action != action || ev.Labels[runtime.LabelApp] != "hello" {
			t.Fatalf("event = %+v, want %s of %s", ev, action, id)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s event", action)
	}
}

func TestRunExitsByItselfAndWait(t *testing.T) {
	ctx := t.Context()
	r := New()
	r.SetRun(func(spec runtime.ContainerSpec) (int, time.Duration, []string, bool) {
		if spec.Labels["kind"] != "task" {
			return 0, 0, nil, false // an app: runs until stopped
		}
		return 3, 10 * time.Millisecond, []string{"hello " + spec.Env["WHO"]}, true
	})
	task, _ := r.Create(ctx, runtime.ContainerSpec{Name: "task", Image: "i", Labels: map[string]string{"kind": "task"},
		Env: map[string]string{"WHO": "you"}, Mounts: []runtime.Mount{{Source: "/a", Target: "/b", ReadOnly: true}}})
	app, _ := r.Create(ctx, runtime.ContainerSpec{Name: "app", Image: "i"})
	for _, id := range []string{task, app} {
		if err := r.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	c, err := r.Wait(ctx, task)
	if err != nil || c.Running || c.ExitCode != 3 || c.FinishedAt.IsZero() {
		t.Fatalf("wait = %+v, %v", c, err)
	}
	rc, _ := r.Logs(ctx, task, false, -1)
	if b, _ := io.ReadAll(rc); string(b) != "hello you\n" {
		t.Fatalf("logs = %q", b)
	}
	if sp, _ := r.Spec(task); len(sp.Mounts) != 1 || sp.Mounts[0].Target != "/b" || !sp.Mounts[0].ReadOnly {
		t.Fatalf("mounts = %+v", sp.Mounts)
	}
	if c, _ := r.Wait(ctx, task); c.ExitCode != 3 {
		t.Fatalf("second wait = %+v", c)
	}

	// The app keeps running: Wait blocks until it is stopped.
	waited := make(chan runtime.Container, 1)
	go func() { c, _ := r.Wait(ctx, app); waited <- c }()
	select {
	case c := <-waited:
		t.Fatalf("wait returned for a running app: %+v", c)
	case <-time.After(50 * time.Millisecond):
	}
	r.Stop(ctx, app, time.Second)
	if c := <-waited; c.Running || c.ExitCode != StopExitCode {
		t.Fatalf("wait after stop = %+v", c)
	}

	r.Remove(ctx, task)
	if _, err := r.Wait(ctx, task); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("wait for removed: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	r.Start(ctx, app)
	cancel()
	if _, err := r.Wait(cctx, app); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait with ended ctx: %v", err)
	}
}

func TestScheduledExitSkipsLaterRuns(t *testing.T) {
	ctx := t.Context()
	r := New()
	r.SetRun(func(runtime.ContainerSpec) (int, time.Duration, []string, bool) {
		return 1, 30 * time.Millisecond, nil, true
	})
	id, _ := r.Create(ctx, runtime.ContainerSpec{Image: "i"})
	r.Start(ctx, id)
	r.Stop(ctx, id, 0)
	r.SetRun(nil)
	r.Start(ctx, id) // the second run must not be ended by the first run's timer
	time.Sleep(100 * time.Millisecond)
	if c, _ := r.Inspect(ctx, id); !c.Running {
		t.Fatalf("second run ended by the first run's exit: %+v", c)
	}
}
