package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"berth/api"
	"berth/internal/store"
	"berth/internal/tasks"
)

// taskEnv is a real embedded store with node records written directly;
// the test plays the agents.
type taskEnv struct {
	t   *testing.T
	ctx context.Context
	st  *store.Store
	log *slog.Logger
}

func newTaskEnv(t *testing.T) *taskEnv {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.OpenEmbedded(ctx, t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return &taskEnv{t: t, ctx: ctx, st: st, log: log}
}

// run starts a task controller; it stops with the test.
func (e *taskEnv) run(tc *Tasks) *Tasks {
	tc.Store, tc.Log, tc.Cluster = e.st, e.log, "c0ffee"
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() { tc.Run(ctx); close(done) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return tc
}

func (e *taskEnv) txn(ops ...store.Op) int64 {
	e.t.Helper()
	rev, err := e.st.Txn(e.ctx, ops...)
	if err != nil {
		e.t.Fatal(err)
	}
	return rev
}

// node registers a node and keeps its heartbeat fresh until the returned
// stop is called.
func (e *taskEnv) node(name string, cpu api.MilliCPU, mem api.Bytes) (stop func()) {
	beat := func() {
		e.txn(store.Nodes.PutAny(name, api.Node{Name: name, Address: "127.0.0.1",
			Capacity: api.Capacity{CPU: cpu, Memory: mem}, Heartbeat: time.Now().UTC()}))
	}
	beat()
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if _, err := store.Nodes.Update(ctx, e.st, name, func(n *api.Node) error {
					n.Heartbeat = time.Now().UTC()
					return nil
				}); err != nil && ctx.Err() == nil {
					e.t.Errorf("heartbeat of %s: %v", name, err)
				}
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	e.t.Cleanup(stop)
	return stop
}

func taskSpec(queue string, cpu api.MilliCPU) api.TaskSpec {
	spec := api.TaskSpec{Image: "berth/busybox:1", Queue: queue, Resources: api.Resources{CPU: cpu}}
	spec.Default()
	return spec
}

// submit stores tasks as the API does.
func (e *taskEnv) submit(specs ...api.TaskSpec) []string {
	e.t.Helper()
	var ids []string
	var ops []store.Op
	now := time.Now().UTC()
	for _, spec := range specs {
		id := api.NewTaskID(now)
		ids = append(ids, id)
		ops = append(ops, store.Tasks.Create(id, tasks.New(id, spec, now)))
	}
	e.txn(ops...)
	return ids
}

func (e *taskEnv) tasks() []api.Task {
	e.t.Helper()
	ts, _, err := store.Tasks.List(e.ctx, e.st)
	if err != nil {
		e.t.Fatal(err)
	}
	return ts
}

// finish ends a task's current attempt as its agent would report it.
func (e *taskEnv) finish(id, state string) {
	e.t.Helper()
	_, err := store.Tasks.Update(e.ctx, e.st, id, func(t *api.Task) error {
		exit := 0
		if state != api.TaskSucceeded {
			exit = 1
		}
		return tasks.Apply(t, api.TaskReport{ID: id, Attempt: len(t.Attempts), State: state, ExitCode: &exit}, time.Now().UTC())
	})
	if err != nil {
		e.t.Fatalf("finish %s: %v", id, err)
	}
}

// waitFor polls cond until it holds; it fails the test after a generous
// deadline, saying what it last saw.
func (e *taskEnv) waitFor(what string, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if e.t.Failed() || time.Now().After(deadline) {
			e.t.Fatalf("waiting for %s: %s", what, seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func byState(ts []api.Task) map[string][]api.Task {
	m := map[string][]api.Task{}
	for _, t := range ts {
		m[t.State] = append(m[t.State], t)
	}
	return m
}

func counts(ts []api.Task) string {
	m := byState(ts)
	return fmt.Sprintf("queued %d, retrying %d, running %d, succeeded %d, failed %d",
		len(m[api.TaskQueued]), len(m[api.TaskRetrying]), len(m[api.TaskRunning]), len(m[api.TaskSucceeded]), len(m[api.TaskFailed]))
}

// A queue with a concurrency of 2 never has more than 2 running under a
// burst of 20, and every task runs once. Nothing but the controller starts
// a task, and only the test ends one, so a look at any moment sees any
// excess.
func TestDispatchHonoursQueueConcurrency(t *testing.T) {
	e := newTaskEnv(t)
	e.node("n1", 16000, 64<<30)
	e.txn(store.Queues.PutAny("burst", api.Queue{Name: "burst", Concurrency: 2}))
	e.run(&Tasks{})
	var specs []api.TaskSpec
	for range 20 {
		specs = append(specs, taskSpec("burst", 100))
	}
	ids := e.submit(append(specs, taskSpec("other", 100))...)

	e.waitFor("all tasks to succeed", func() (bool, string) {
		ts := e.tasks()
		running := 0
		for _, task := range ts {
			if task.State == api.TaskRunning && task.Spec.Queue == "burst" {
				running++
			}
		}
		if running > 2 {
			t.Fatalf("%d tasks of queue burst running at once, limit 2", running)
		}
		for _, task := range ts {
			if task.State == api.TaskRunning {
				e.finish(task.ID, api.TaskSucceeded)
			}
		}
		return len(byState(ts)[api.TaskSucceeded]) == len(ids), counts(ts)
	})
	for _, task := range e.tasks() {
		if len(task.Attempts) != 1 || task.Attempts[0].Node != "n1" ||
			task.Attempts[0].Container != tasks.ContainerName("c0ffee", task.ID, 1) {
			t.Errorf("task %s: attempts %+v, want one on n1", task.ID, task.Attempts)
		}
	}
}

// A burst on one queue does not starve another: with room for two, a
// later task of another queue starts before the burst's second task.
func TestDispatchBurstDoesNotStarveAnotherQueue(t *testing.T) {
	e := newTaskEnv(t)
	e.node("n1", 200, 64<<30)
	var specs []api.TaskSpec
	for range 20 {
		specs = append(specs, taskSpec("burst", 100))
	}
	e.submit(specs...)
	late := e.submit(taskSpec("other", 100))[0]
	e.run(&Tasks{})
	e.waitFor("two tasks to run", func() (bool, string) {
		ts := e.tasks()
		return len(byState(ts)[api.TaskRunning]) == 2, counts(ts)
	})
	task, err := store.Tasks.Get(e.ctx, e.st, late)
	if err != nil {
		t.Fatal(err)
	}
	if task.State != api.TaskRunning {
		t.Errorf("the other queue's task is %s behind the burst", task.State)
	}
}

// Apps and tasks share a node's capacity: together they never take more
// than it has, whichever of them comes first.
func TestAppsAndTasksShareNodeCapacity(t *testing.T) {
	e := newTaskEnv(t)
	e.node("n1", 1000, 8<<30)
	tc := e.run(&Tasks{})
	ctl := &Controller{Store: e.st, Log: e.log, Tasks: tc}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() { ctl.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	// used fails the test when the node is overbooked, and says what it holds.
	used := func() (cpu api.MilliCPU, placed int, seen string) {
		insts, _, err := store.Instances.List(e.ctx, e.st)
		if err != nil {
			t.Fatal(err)
		}
		for _, inst := range insts {
			if inst.Node != "" {
				cpu += inst.Spec.Resources.CPU
				placed++
			}
		}
		ts := e.tasks()
		for _, task := range byState(ts)[api.TaskRunning] {
			cpu += task.Spec.Resources.CPU
		}
		seen = fmt.Sprintf("%s used, %d instances placed; tasks: %s", cpu, placed, counts(ts))
		if cpu > 1000 {
			t.Fatalf("node overbooked: %s", seen)
		}
		return cpu, placed, seen
	}

	var specs []api.TaskSpec
	for range 10 {
		specs = append(specs, taskSpec("default", 200))
	}
	e.submit(specs...)
	e.waitFor("tasks to fill the node", func() (bool, string) {
		cpu, _, seen := used()
		return cpu == 1000, seen
	})

	replicas := 2
	spec := api.AppSpec{Name: "web", Image: "berth/demo:1", Replicas: &replicas, Resources: api.Resources{CPU: 300}}
	spec.Default()
	e.txn(store.Apps.Create("web", api.App{Spec: spec, Revision: 1, TemplateRevision: 1, Created: time.Now().UTC()}))
	e.waitFor("the app's instances to be found unschedulable", func() (bool, string) {
		insts, _, err := store.Instances.List(e.ctx, e.st)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, inst := range insts {
			if inst.Reason != "" {
				n++
			}
		}
		_, _, seen := used()
		return n == 2, seen
	})

	// End the tasks a few at a time: whoever takes the room, it holds.
	e.waitFor("all tasks done and the app placed", func() (bool, string) {
		_, placed, seen := used()
		ts := e.tasks()
		if running := byState(ts)[api.TaskRunning]; len(running) > 0 {
			e.finish(running[0].ID, api.TaskSucceeded)
		}
		return len(byState(ts)[api.TaskSucceeded]) == 10 && placed == 2, seen
	})

	// With the app placed (600m), new tasks get the 400m left.
	specs = specs[:5]
	e.submit(specs...)
	e.waitFor("two of five new tasks to run", func() (bool, string) {
		cpu, _, seen := used()
		return cpu == 1000, seen
	})
	e.waitFor("the new tasks done", func() (bool, string) {
		_, _, seen := used()
		ts := e.tasks()
		if running := byState(ts)[api.TaskRunning]; len(running) > 0 {
			e.finish(running[0].ID, api.TaskSucceeded)
		}
		return len(byState(ts)[api.TaskSucceeded]) == 15, seen
	})
}

// A task on a node that went down is tried again elsewhere, and the lost
// attempt does not use up a retry.
func TestAttemptOnDownNodeIsRetried(t *testing.T) {
	e := newTaskEnv(t)
	e.node("n1", 4000, 1<<30)
	stopN2 := e.node("n2", 4000, 4<<30) // more free memory: the first choice
	e.run(&Tasks{NodeTTL: 2 * time.Second})
	spec := taskSpec("default", 100) // no retries
	id := e.submit(spec)[0]
	get := func() api.Task {
		task, err := store.Tasks.Get(e.ctx, e.st, id)
		if err != nil {
			t.Fatal(err)
		}
		return task
	}
	e.waitFor("the task to run on n2", func() (bool, string) {
		task := get()
		return task.State == api.TaskRunning && task.Node == "n2", fmt.Sprintf("%s on %q", task.State, task.Node)
	})
	stopN2()
	e.waitFor("a second attempt on n1", func() (bool, string) {
		task := get()
		return task.State == api.TaskRunning && task.Node == "n1", fmt.Sprintf("%s on %q, %d attempts", task.State, task.Node, len(task.Attempts))
	})
	e.finish(id, api.TaskSucceeded)
	task := get()
	if task.State != api.TaskSucceeded || task.UserFailures != 0 || task.PlatformFailures != 1 || len(task.Attempts) != 2 {
		t.Fatalf("task %s: user failures %d, platform failures %d, %d attempts", task.State, task.UserFailures, task.PlatformFailures, len(task.Attempts))
	}
	if a := task.Attempts[0]; a.State != api.AttemptLost || !a.Platform || a.Node != "n2" || a.Error == "" {
		t.Errorf("first attempt %+v, want lost on n2 with a reason", a)
	}
}

// A running task whose node record is gone is tried again.
func TestAttemptOnRemovedNodeIsRetried(t *testing.T) {
	e := newTaskEnv(t)
	stopN1 := e.node("n1", 4000, 4<<30)
	e.run(&Tasks{})
	id := e.submit(taskSpec("default", 100))[0]
	e.waitFor("the task to run", func() (bool, string) {
		task, _ := store.Tasks.Get(e.ctx, e.st, id)
		return task.State == api.TaskRunning, task.State
	})
	stopN1()
	e.txn(store.Nodes.DeleteAny("n1"))
	e.waitFor("the attempt to be lost", func() (bool, string) {
		task, _ := store.Tasks.Get(e.ctx, e.st, id)
		return task.State == api.TaskRetrying && task.PlatformFailures == 1, fmt.Sprintf("%s, %+v", task.State, task.Attempts)
	})
}

// A pass counts what the passes before it started, before the watch
// brings it: here there is no watch at all, and a retrying task that
// becomes due later must not take the queue past its limit.
func TestDispatchCountsItsOwnWrites(t *testing.T) {
	e := newTaskEnv(t)
	e.node("n1", 16000, 64<<30)
	e.txn(store.Queues.PutAny("q", api.Queue{Name: "q", Concurrency: 2}))
	now := time.Now().UTC()
	var specs []api.TaskSpec
	for range 5 {
		specs = append(specs, taskSpec("q", 100))
	}
	e.submit(specs...)
	retrying := tasks.New("0000000000000001", taskSpec("q", 100), now.Add(-time.Hour))
	tasks.Assign(&retrying, "c0ffee", "n1", now.Add(-time.Hour))
	if err := tasks.Lose(&retrying, "node n1 is down", now); err != nil {
		t.Fatal(err)
	}
	e.txn(store.Tasks.Create(retrying.ID, retrying))

	tc := e.scheduleController()
	tc.NodeTTL = time.Hour
	for _, at := range []time.Time{now, retrying.NotBefore.Add(time.Second)} {
		if _, err := tc.dispatch(e.ctx, at); err != nil {
			t.Fatal(err)
		}
	}
	if ts := e.tasks(); len(byState(ts)[api.TaskRunning]) != 2 {
		t.Fatalf("after two passes: %s; want 2 running", counts(ts))
	}
}

// A task that changed after the controller read it (here: cancelled) is
// not assigned; the others of its batch are.
func TestDispatchConflictLeavesTheOthers(t *testing.T) {
	e := newTaskEnv(t)
	e.node("n1", 16000, 64<<30)
	var specs []api.TaskSpec
	for range 5 {
		specs = append(specs, taskSpec("default", 100))
	}
	ids := e.submit(specs...)
	tc := e.scheduleController()
	tc.NodeTTL = time.Hour
	if _, err := store.Tasks.Update(e.ctx, e.st, ids[2], func(task *api.Task) error {
		tasks.Cancel(task, time.Now().UTC())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.dispatch(e.ctx, time.Now().UTC()); err != nil {
		t.Fatal(err)
	}
	m := byState(e.tasks())
	if len(m[api.TaskRunning]) != 4 || len(m[api.TaskCancelled]) != 1 {
		t.Fatalf("%s, cancelled %d; want 4 running and the cancelled one left alone", counts(e.tasks()), len(m[api.TaskCancelled]))
	}
	if c := m[api.TaskCancelled][0]; c.ID != ids[2] || len(c.Attempts) != 0 {
		t.Errorf("cancelled task %s has %d attempts", c.ID, len(c.Attempts))
	}
}

// scheduleController makes a controller whose mirrors are filled from the
// store by hand, so that schedules can be fired at chosen times.
func (e *taskEnv) scheduleController() *Tasks {
	tc := &Tasks{Store: e.st, Log: e.log, Cluster: "c0ffee"}
	tc.init()
	e.reload(tc)
	return tc
}

// reload fills the controller's mirrors from the store, as its watches
// would.
func (e *taskEnv) reload(tc *Tasks) {
	e.t.Helper()
	reloadKind(e, store.Schedules, tc.schedules)
	reloadKind(e, store.Tasks, tc.tasks)
	reloadKind(e, store.Nodes, tc.nodes)
	reloadKind(e, store.Instances, tc.instances)
	reloadKind(e, store.Queues, tc.queues)
}

func reloadKind[T any](e *taskEnv, kind store.Kind[T], m *mirror[T]) {
	e.t.Helper()
	items, rev, err := kind.List(e.ctx, e.st)
	if err != nil {
		e.t.Fatal(err)
	}
	m.reset(items, rev)
}

func (e *taskEnv) schedule(name string) api.Schedule {
	e.t.Helper()
	s, err := store.Schedules.Get(e.ctx, e.st, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *taskEnv) tasksOf(schedule string) []api.Task {
	var out []api.Task
	for _, task := range e.tasks() {
		if task.Schedule == schedule {
			out = append(out, task)
		}
	}
	return out
}

func newSchedule(name, cron, overlap string, created time.Time) api.Schedule {
	s := api.Schedule{Name: name, Cron: cron, Overlap: overlap, Created: created,
		Task: api.TaskSpec{Image: "berth/busybox:1", Command: []string{"true"}, Payload: []byte(`{"n":1}`)}}
	s.Default()
	return s
}

// A schedule of @every 1s fires about each second, never twice for one
// time, even with two controllers at it.
func TestScheduleFiresEverySecondOnce(t *testing.T) {
	e := newTaskEnv(t)
	e.txn(store.Schedules.Create("tick", newSchedule("tick", "@every 1s", api.OverlapAllow, time.Now().UTC())))
	e.run(&Tasks{})
	e.run(&Tasks{})
	e.waitFor("three runs", func() (bool, string) {
		n := len(e.tasksOf("tick"))
		return n >= 3, fmt.Sprintf("%d runs", n)
	})
	runs := e.tasksOf("tick")
	seconds := map[int64]string{}
	for _, task := range runs {
		s := task.Created.Unix()
		if other, ok := seconds[s]; ok {
			t.Fatalf("tasks %s and %s fired in the same second %s", other, task.ID, task.Created)
		}
		seconds[s] = task.ID
		p, err := store.Payloads.Get(e.ctx, e.st, task.ID)
		if err != nil || string(p.Data) != `{"n":1}` || task.PayloadSize != len(p.Data) {
			t.Errorf("task %s: payload %q (%v), size %d", task.ID, p.Data, err, task.PayloadSize)
		}
		if task.Spec.Payload != nil || task.State == "" {
			t.Errorf("task %s: %+v", task.ID, task)
		}
	}
}

// With overlap skip, a due run while the last one is active makes no task
// but moves LastRun; once the last run ended, the next one fires.
func TestScheduleOverlapSkip(t *testing.T) {
	e := newTaskEnv(t)
	t0 := time.Now().UTC().Truncate(5 * time.Minute).Add(-time.Hour)
	e.txn(store.Schedules.Create("nightly", newSchedule("nightly", "*/5 * * * *", api.OverlapSkip, t0)))
	tc := e.scheduleController()

	fire := func(at time.Time) time.Time {
		t.Helper()
		next, err := tc.fireSchedules(e.ctx, at)
		if err != nil {
			t.Fatal(err)
		}
		return next
	}
	at := t0.Add(5*time.Minute + time.Second)
	if next := fire(at); !next.Equal(t0.Add(10 * time.Minute)) {
		t.Errorf("next fire %s, want %s", next, t0.Add(10*time.Minute))
	}
	runs := e.tasksOf("nightly")
	if len(runs) != 1 || e.schedule("nightly").LastTask != runs[0].ID {
		t.Fatalf("%d runs after the first fire; schedule %+v", len(runs), e.schedule("nightly"))
	}
	first := runs[0].ID

	// Still queued at the next fire: skipped, with LastRun moved on.
	at = t0.Add(10*time.Minute + time.Second)
	fire(at)
	if n := len(e.tasksOf("nightly")); n != 1 {
		t.Fatalf("%d runs: a run fired while the last was active", n)
	}
	if s := e.schedule("nightly"); !s.LastRun.Equal(at) || s.LastTask != first {
		t.Errorf("after a skip: last run %s, last task %s; want %s, %s", s.LastRun, s.LastTask, at, first)
	}

	// The last run ended: the next fire makes a task.
	_, err := store.Tasks.Update(e.ctx, e.st, first, func(task *api.Task) error {
		tasks.Cancel(task, at)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.reload(tc)
	fire(t0.Add(15*time.Minute + time.Second))
	if n := len(e.tasksOf("nightly")); n != 2 {
		t.Fatalf("%d runs after the last one ended, want 2", n)
	}
}

// A run missed while berth was down fires once at start, however many
// were missed; the next fires at its time.
func TestScheduleMissedRunFiresOnce(t *testing.T) {
	e := newTaskEnv(t)
	now := time.Now().UTC()
	s := newSchedule("hourly", "@hourly", api.OverlapAllow, now.Add(-48*time.Hour))
	s.LastRun = now.Add(-5 * time.Hour)
	e.txn(store.Schedules.Create("hourly", s))
	tc := e.scheduleController()
	for _, at := range []time.Time{now, now.Add(time.Second), now.Add(10 * time.Second)} {
		if _, err := tc.fireSchedules(e.ctx, at); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(e.tasksOf("hourly")); n != 1 {
		t.Fatalf("%d runs, want 1", n)
	}
	next, err := tc.fireSchedules(e.ctx, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(e.tasksOf("hourly")); n != 2 || !next.After(now.Add(time.Hour)) {
		t.Fatalf("%d runs an hour later, next at %s", n, next)
	}

	// And the same with the controller running: one run at start.
	s2 := newSchedule("daily", "0 3 * * *", api.OverlapAllow, now.Add(-72*time.Hour))
	s2.LastRun = now.Add(-50 * time.Hour)
	e.txn(store.Schedules.Create("daily", s2))
	e.run(&Tasks{})
	e.waitFor("the missed daily run", func() (bool, string) {
		s := e.schedule("daily")
		return !s.LastRun.Equal(s2.LastRun), s.LastRun.String()
	})
	if n := len(e.tasksOf("daily")); n != 1 {
		t.Fatalf("%d daily runs, want 1", n)
	}
}

// A controller that read an old version of a schedule (another one fired
// it meanwhile, or it crashed and came back) does not fire it again.
func TestScheduleStaleVersionDoesNotFire(t *testing.T) {
	e := newTaskEnv(t)
	now := time.Now().UTC()
	e.txn(store.Schedules.Create("s", newSchedule("s", "@every 1m", api.OverlapAllow, now.Add(-time.Hour))))
	a, b := e.scheduleController(), e.scheduleController()
	if _, err := a.fireSchedules(e.ctx, now); err != nil {
		t.Fatal(err)
	}
	if _, err := b.fireSchedules(e.ctx, now); err != nil {
		t.Fatal(err)
	}
	if n := len(e.tasksOf("s")); n != 1 {
		t.Fatalf("%d runs from two controllers at one time, want 1", n)
	}
}

type fakeLogs struct {
	mu      sync.Mutex
	removed []string
	fail    map[string]bool
}

func (l *fakeLogs) Remove(id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail[id] {
		return errors.New("disk says no")
	}
	l.removed = append(l.removed, id)
	return nil
}

// Retention deletes only ended tasks older than it, with their payloads,
// their keys while the keys still name them, and their output.
func TestRetentionDeletesOldEndedTasks(t *testing.T) {
	e := newTaskEnv(t)
	now := time.Now().UTC()
	old, recent := now.Add(-8*24*time.Hour), now.Add(-time.Hour)
	mk := func(id, state string, ended time.Time, key string) api.Task {
		spec := taskSpec("default", 100)
		spec.IdempotencyKey = key
		task := tasks.New(id, spec, ended.Add(-time.Minute))
		task.State, task.Ended, task.Updated = state, ended, ended
		if state == api.TaskQueued {
			task.Ended = time.Time{}
		}
		e.txn(store.Tasks.Create(id, task), store.Payloads.Create(id, api.TaskPayload{Data: []byte("p")}))
		return task
	}
	mk("0000000000000001", api.TaskSucceeded, old, "k1")
	mk("0000000000000002", api.TaskFailed, old, "k2")
	mk("0000000000000003", api.TaskSucceeded, recent, "")
	mk("0000000000000004", api.TaskQueued, old, "")
	mk("0000000000000005", api.TaskCancelled, old, "")
	mk("0000000000000006", api.TaskTimedOut, old, "") // its output cannot be removed
	e.txn(store.TaskKeys.Create("k1", api.TaskKey{Task: "0000000000000001"}),
		store.TaskKeys.Create("k2", api.TaskKey{Task: "0000000000000009"})) // k2 was taken over

	logs := &fakeLogs{fail: map[string]bool{"0000000000000006": true}}
	tc := &Tasks{Store: e.st, Log: e.log, Retention: 7 * 24 * time.Hour, Logs: logs}
	n, err := tc.retain(e.ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("%d deleted, want 3", n)
	}
	left := map[string]bool{}
	for _, task := range e.tasks() {
		left[task.ID] = true
	}
	for id, want := range map[string]bool{"0000000000000001": false, "0000000000000002": false, "0000000000000003": true,
		"0000000000000004": true, "0000000000000005": false, "0000000000000006": true} {
		if left[id] != want {
			t.Errorf("task %s kept: %v, want %v", id, left[id], want)
		}
		if _, err := store.Payloads.Get(e.ctx, e.st, id); (err == nil) != want {
			t.Errorf("payload of %s kept: %v, want %v", id, err == nil, want)
		}
	}
	if _, err := store.TaskKeys.Get(e.ctx, e.st, "k1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("key k1 of a deleted task: %v, want it gone", err)
	}
	if _, err := store.TaskKeys.Get(e.ctx, e.st, "k2"); err != nil {
		t.Errorf("key k2, which names another task: %v, want it kept", err)
	}
	if fmt.Sprint(logs.removed) != "[0000000000000001 0000000000000002 0000000000000005]" {
		t.Errorf("output removed for %v", logs.removed)
	}
}
