package controller

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"berth/api"
	"berth/internal/store"
)

// Tasks runs the task queue: it starts queued tasks on nodes with room,
// retries the attempts of nodes that went away, fires schedules and
// deletes old ended tasks.
type Tasks struct {
	Store     *store.Store
	Log       *slog.Logger
	Cluster   string                               // cluster id, for container names (tasks.ContainerName)
	NodeTTL   time.Duration                        // a node without a heartbeat for this long is down; default 10s
	Retention time.Duration                        // ended tasks are deleted after this; default 7 days
	Logs      interface{ Remove(id string) error } // task output files; may be nil

	// mu guards everything below. The loop holds it while it applies
	// changes and for a whole pass, writes included; the app controller
	// holds it while it places instances, so that apps and tasks never
	// overbook a node together.
	mu               sync.Mutex
	tasks            *mirror[api.Task] // active tasks only
	index            *taskIndex
	nodes            *mirror[api.Node]
	instances        *mirror[api.Instance]
	queues           *mirror[api.Queue]
	schedules        *mirror[api.Schedule]
	crons            map[string]parsedCron // parsed cron expressions
	nextFire         time.Time             // earliest schedule fire time; zero: none
	schedulesChanged bool
	relist           chan struct{}
	started          time.Time
}

const (
	taskResync      = 2 * time.Second // a pass with no change seen
	retentionPeriod = time.Hour
	maxTxnOps       = 1000 // berth's embedded etcd allows 4096 operations per transaction
)

// Run dispatches, fires schedules and deletes old tasks until ctx ends.
func (t *Tasks) Run(ctx context.Context) error {
	if t.NodeTTL == 0 {
		t.NodeTTL = 10 * time.Second
	}
	if t.Retention == 0 {
		t.Retention = 7 * 24 * time.Hour
	}
	t.mu.Lock()
	t.init()
	t.mu.Unlock()

	// Changes arrive as functions, applied on this goroutine under mu.
	updates := make(chan func(), 1024)
	apply := func(f func()) bool {
		select {
		case updates <- f:
			return true
		case <-ctx.Done():
			return false
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { follow(ctx, t.Store, t.Log, store.Tasks, t.tasks, apply, t.relist) })
	wg.Go(func() { follow(ctx, t.Store, t.Log, store.Nodes, t.nodes, apply, nil) })
	wg.Go(func() { follow(ctx, t.Store, t.Log, store.Instances, t.instances, apply, nil) })
	wg.Go(func() { follow(ctx, t.Store, t.Log, store.Queues, t.queues, apply, nil) })
	wg.Go(func() { follow(ctx, t.Store, t.Log, store.Schedules, t.schedules, apply, nil) })
	wg.Go(func() { t.retainLoop(ctx) })

	resync := time.NewTicker(taskResync)
	defer resync.Stop()
	wake := time.NewTimer(taskResync)
	defer wake.Stop()
	schedulesDue := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case f := <-updates:
			t.mu.Lock()
			f()
			// Coalesce: apply what else has come, then one pass.
		drain:
			for range 1000 {
				select {
				case f = <-updates:
					f()
				default:
					break drain
				}
			}
			t.mu.Unlock()
		case <-wake.C:
			schedulesDue = true
		case <-resync.C:
			schedulesDue = true
		}
		t.mu.Lock()
		next := t.pass(ctx, time.Now().UTC(), &schedulesDue)
		t.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		if next.IsZero() {
			wake.Stop()
		} else {
			wake.Reset(max(time.Until(next), time.Millisecond))
		}
	}
}

func (t *Tasks) init() {
	t.index = newTaskIndex()
	t.tasks = newMirror(func(v *api.Task) string { return v.ID }, func(v *api.Task) *int64 { return &v.Version })
	t.tasks.keep, t.tasks.changed = activeTask, t.index.change
	t.nodes = newMirror(func(v *api.Node) string { return v.Name }, func(v *api.Node) *int64 { return &v.Version })
	t.instances = newMirror(func(v *api.Instance) string { return v.Name }, func(v *api.Instance) *int64 { return &v.Version })
	t.queues = newMirror(func(v *api.Queue) string { return v.Name }, func(v *api.Queue) *int64 { return &v.Version })
	t.schedules = newMirror(func(v *api.Schedule) string { return v.Name }, func(v *api.Schedule) *int64 { return &v.Version })
	t.schedules.changed = func(string, *api.Schedule, *api.Schedule) { t.schedulesChanged = true }
	t.crons = map[string]parsedCron{}
	t.relist = make(chan struct{}, 1)
	t.started = time.Now()
}

// pass runs dispatch and, when due or changed, the schedules; it returns
// when the next pass is wanted (zero: on the next change or resync).
func (t *Tasks) pass(ctx context.Context, now time.Time, schedulesDue *bool) time.Time {
	var next time.Time
	if t.tasks.loaded && t.nodes.loaded && t.instances.loaded && t.queues.loaded {
		retry, err := t.dispatch(ctx, now)
		if err != nil && ctx.Err() == nil {
			t.Log.Warn("dispatch tasks", "err", err)
		}
		next = retry
	}
	if t.tasks.loaded && t.schedules.loaded && (*schedulesDue || t.schedulesChanged || (!t.nextFire.IsZero() && !now.Before(t.nextFire))) {
		*schedulesDue, t.schedulesChanged = false, false
		fire, err := t.fireSchedules(ctx, now)
		if err != nil && ctx.Err() == nil {
			t.Log.Warn("fire schedules", "err", err)
		}
		t.nextFire = fire
	}
	t.tasks.forget()
	t.schedules.forget()
	return earliest(next, t.nextFire)
}

// writeTasks writes changed tasks, each with compare-and-swap on the
// version it was read at, in transactions of at most maxTxnOps. A batch that
// conflicts is tried again task by task; a task that changed meanwhile is
// left to the next pass. It returns the tasks written.
func (t *Tasks) writeTasks(ctx context.Context, changed []api.Task) ([]api.Task, error) {
	var written []api.Task
	for batch := range slices.Chunk(changed, maxTxnOps) {
		rev, err := t.Store.Txn(ctx, putTasks(batch)...)
		switch {
		case err == nil:
			written = append(written, t.wroteTasks(batch, rev)...)
			continue
		case !errors.Is(err, store.ErrConflict):
			t.uncertain()
			return written, err
		case len(batch) == 1:
			continue
		}
		for i := range batch {
			one := batch[i : i+1]
			rev, err := t.Store.Txn(ctx, putTasks(one)...)
			switch {
			case err == nil:
				written = append(written, t.wroteTasks(one, rev)...)
			case !errors.Is(err, store.ErrConflict):
				t.uncertain()
				return written, err
			}
		}
	}
	return written, nil
}

func putTasks(ts []api.Task) []store.Op {
	ops := make([]store.Op, len(ts))
	for i := range ts {
		ops[i] = store.Tasks.Put(ts[i].ID, ts[i], ts[i].Version)
	}
	return ops
}

func (t *Tasks) wroteTasks(ts []api.Task, rev int64) []api.Task {
	for i := range ts {
		t.tasks.wrote(ts[i].ID, ts[i], rev)
		ts[i].Version = rev
	}
	return ts
}

// uncertain: a write failed without saying whether it was applied. Until
// the tasks are listed again, the counts of running tasks cannot be
// trusted, so dispatch waits for the list.
func (t *Tasks) uncertain() {
	t.tasks.loaded = false
	select {
	case t.relist <- struct{}{}:
	default:
	}
}

func earliest(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero() || a.Before(b):
		return a
	}
	return b
}
