package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"berth/api"
	"berth/internal/client"
	"berth/internal/runtime"
)

// taskAPI is the part of the API the task runner uses; *client.Client has it.
type taskAPI interface {
	ListTasks(ctx context.Context, f client.TaskFilter) (api.List[api.Task], error)
	GetTask(ctx context.Context, id string) (api.Task, error)
	WatchTasks(ctx context.Context, f client.TaskFilter, rev int64) (<-chan api.WatchEvent[api.Task], <-chan error)
	TaskPayload(ctx context.Context, id string) ([]byte, error)
	PutTaskLog(ctx context.Context, id string, attempt int, offset int64, data []byte, final bool) error
	ReportTasks(ctx context.Context, reports []api.TaskReport) ([]api.TaskReportResult, error)
}

// doneMemory is how long a finished attempt is remembered, so that a late
// event about it does not run it again.
const doneMemory = 10 * time.Minute

// taskRecheckEvery is how often the attempts running here are checked
// against their tasks (a variable for tests).
var taskRecheckEvery = resyncEvery

// taskRunner runs the task attempts the server assigns to this node, each
// in its own goroutine, from container start to saved logs and removal.
type taskRunner struct {
	api        taskAPI
	rt         runtime.Runtime
	cluster    string
	node       string
	payloadDir string
	log        *slog.Logger
	reports    *reporter
	kick       chan struct{} // cap 1: resync now
	uploads    chan struct{} // log uploads in flight

	mu     sync.Mutex
	synced bool                           // tasks holds a full list
	tasks  map[string]api.Task            // running tasks whose current attempt is on this node
	active map[string]map[int]*attemptRun // attempts handled now, by task and number
	done   map[string]time.Time           // attempts finished in this process ("id.n"), and when
	wg     sync.WaitGroup                 // attempt goroutines
}

// attemptRun is one attempt being handled.
type attemptRun struct {
	id          string
	n           int
	since       time.Time
	cancel      chan struct{} // closed: the user asked to cancel the task
	abandon     chan struct{} // closed: no longer the task's current attempt here
	cancelOnce  sync.Once
	abandonOnce sync.Once
}

func (r *attemptRun) requestCancel()  { r.cancelOnce.Do(func() { close(r.cancel) }) }
func (r *attemptRun) requestAbandon() { r.abandonOnce.Do(func() { close(r.abandon) }) }

func attemptKey(id string, n int) string { return id + "." + strconv.Itoa(n) }

func (a *Agent) newTaskRunner() *taskRunner {
	dir := a.PayloadDir
	if dir == "" {
		// Per cluster and node: each agent removes what it does not use.
		dir = filepath.Join(os.TempDir(), "berth-task-payloads", a.cluster+"-"+a.Node)
	}
	return &taskRunner{
		api: a.Client, rt: a.Runtime, cluster: a.cluster, node: a.Node, payloadDir: dir, log: a.Log,
		reports: newReporter(a.Client, a.Log),
		kick:    make(chan struct{}, 1),
		uploads: make(chan struct{}, logUploads),
		tasks:   map[string]api.Task{},
		active:  map[string]map[int]*attemptRun{},
		done:    map[string]time.Time{},
	}
}

// run follows this node's tasks until ctx ends, then waits for its
// goroutines. Containers keep running: the next start adopts them.
func (r *taskRunner) run(ctx context.Context) {
	r.reports.onResult = func(res api.TaskReportResult) { r.update(ctx, *res.Task) }
	var wg sync.WaitGroup
	wg.Go(func() { r.reports.run(ctx) })
	wg.Go(func() { r.resyncLoop(ctx) })
	r.follow(ctx)
	wg.Wait()
	r.wg.Wait()
}

// follow lists this node's active tasks, then watches them from the list's
// revision; a broken watch (or a 410) lists again.
func (r *taskRunner) follow(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		l, err := r.api.ListTasks(ctx, client.TaskFilter{Node: r.node, Active: true, Limit: -1})
		if err != nil {
			if ctx.Err() == nil {
				r.log.Debug("list tasks", "err", err, "retry_in", backoff)
			}
			sleep(ctx, backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		r.replace(ctx, l)
		events, errc := r.api.WatchTasks(ctx, client.TaskFilter{Node: r.node}, l.Revision)
		for ev := range events {
			switch ev.Type {
			case "put":
				r.update(ctx, ev.Object)
			case "delete":
				r.update(ctx, api.Task{ID: ev.Object.ID, Version: ev.Revision})
			}
		}
		select {
		case err := <-errc:
			if ctx.Err() == nil {
				r.log.Debug("watch tasks", "err", err)
			}
		default:
		}
		sleep(ctx, backoff)
	}
}

// replace applies a full list of this node's active tasks taken at
// l.Revision: a task known here but missing from it has ended or moved
// (unless what is known is newer than the list).
func (r *taskRunner) replace(ctx context.Context, l api.List[api.Task]) {
	listed := make(map[string]bool, len(l.Items))
	for _, t := range l.Items {
		listed[t.ID] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, t := range r.tasks {
		if !listed[id] && t.Version <= l.Revision {
			r.forgetLocked(id, 0)
		}
	}
	for _, t := range l.Items {
		r.updateLocked(ctx, t)
	}
	if !r.synced {
		r.synced = true
		r.kickResync() // adopt or remove what the engine already has
	}
}

func (r *taskRunner) update(ctx context.Context, t api.Task) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updateLocked(ctx, t)
}

// updateLocked takes in one task as the server has it: an attempt of this
// node not yet handled starts; a cancel reaches its attempt; an attempt
// that is no longer current is abandoned.
func (r *taskRunner) updateLocked(ctx context.Context, t api.Task) {
	if old, ok := r.tasks[t.ID]; ok && t.Version != 0 && t.Version < old.Version {
		return // older than what is known (a report's answer came first)
	}
	cur := t.Current()
	if t.State != api.TaskRunning || t.Node != r.node || cur == nil || cur.Node != r.node {
		r.forgetLocked(t.ID, 0)
		return
	}
	r.tasks[t.ID] = t
	for n, run := range r.active[t.ID] {
		if n != cur.N {
			run.requestAbandon()
		}
	}
	if run := r.active[t.ID][cur.N]; run != nil {
		if t.CancelRequested {
			run.requestCancel()
		}
		return
	}
	if _, finished := r.done[attemptKey(t.ID, cur.N)]; finished {
		return
	}
	r.startLocked(ctx, t)
}

// forgetLocked drops a task that is not (or no longer) running here and
// abandons its attempts other than keep.
func (r *taskRunner) forgetLocked(id string, keep int) {
	delete(r.tasks, id)
	for n, run := range r.active[id] {
		if n != keep {
			run.requestAbandon()
		}
	}
}

func (r *taskRunner) startLocked(ctx context.Context, t api.Task) {
	cur := t.Current()
	run := &attemptRun{id: t.ID, n: cur.N, since: time.Now(), cancel: make(chan struct{}), abandon: make(chan struct{})}
	if t.CancelRequested {
		run.requestCancel()
	}
	if r.active[t.ID] == nil {
		r.active[t.ID] = map[int]*attemptRun{}
	}
	r.active[t.ID][cur.N] = run
	r.wg.Go(func() {
		finished := r.runAttempt(ctx, run, t)
		r.finish(run, finished)
	})
}

// finish drops a handled attempt; a finished one is remembered so that it
// never runs twice in this process.
func (r *taskRunner) finish(run *attemptRun, finished bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.active[run.id], run.n)
	if len(r.active[run.id]) == 0 {
		delete(r.active, run.id)
	}
	if !finished {
		return
	}
	r.done[attemptKey(run.id, run.n)] = time.Now()
	// The watch filters on this node: the task's end (node cleared) may
	// never come through it.
	if t, ok := r.tasks[run.id]; ok && t.Current().N <= run.n {
		delete(r.tasks, run.id)
	}
}

func (r *taskRunner) kickResync() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// resyncLoop checks now and then (and once the first list is in) that the
// engine holds only the task containers it should, and that the attempts
// running here still are their tasks' current ones.
func (r *taskRunner) resyncLoop(ctx context.Context) {
	sweep := time.NewTicker(resyncEvery)
	defer sweep.Stop()
	recheck := time.NewTicker(taskRecheckEvery)
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-sweep.C:
		case <-recheck.C:
			r.recheck(ctx)
			continue
		}
		r.sweep(ctx)
	}
}

// recheck reads the tasks of the attempts that have run here for a while:
// the watch follows this node's tasks, so it does not show a task moved
// away (its node lost, then retried elsewhere). Such an attempt is stopped.
func (r *taskRunner) recheck(ctx context.Context) {
	var ids []string
	r.mu.Lock()
	for id, runs := range r.active {
		for _, run := range runs {
			if time.Since(run.since) > taskRecheckEvery {
				ids = append(ids, id)
				break
			}
		}
	}
	r.mu.Unlock()
	for _, id := range ids {
		t, err := r.api.GetTask(ctx, id)
		switch {
		case client.IsStatus(err, 404):
			r.update(ctx, api.Task{ID: id})
		case err == nil:
			r.update(ctx, t)
		}
	}
}

// sweep adopts the container of a current attempt of this node that is not
// handled yet, removes every other task container, and every payload no
// attempt uses.
func (r *taskRunner) sweep(ctx context.Context) {
	r.mu.Lock()
	synced := r.synced
	for key, at := range r.done {
		if time.Since(at) > doneMemory {
			delete(r.done, key)
		}
	}
	r.mu.Unlock()
	if !synced {
		return // never judge containers before the full list arrived
	}
	containers, err := r.rt.List(ctx, map[string]string{runtime.LabelCluster: r.cluster, runtime.LabelNode: r.node})
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("list task containers", "err", err)
		}
		return
	}
	for _, c := range containers {
		id := c.Labels[runtime.LabelTask]
		if id == "" {
			continue // an instance's
		}
		n, _ := strconv.Atoi(c.Labels[runtime.LabelAttempt])
		if r.claim(ctx, id, n, c.Name) {
			continue
		}
		r.log.Info("removing task container", "container", c.Name, "task", id, "attempt", n)
		if err := r.rt.Remove(ctx, c.ID); err != nil {
			r.log.Warn("remove task container", "container", c.Name, "err", err)
		}
		r.removePayload(id, n)
	}
	r.sweepPayloads()
}

// claim reports whether a task container belongs to an attempt handled
// here, starting its handling (adoption) when it is current but not yet
// handled.
func (r *taskRunner) claim(ctx context.Context, id string, n int, name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.active[id][n] != nil {
		return true
	}
	t, ok := r.tasks[id]
	if !ok {
		return false
	}
	cur := t.Current()
	if cur.N != n || cur.Container != name {
		return false
	}
	if _, finished := r.done[attemptKey(id, n)]; finished {
		return false
	}
	r.startLocked(ctx, t)
	return true
}

// sweepPayloads removes payload directories of attempts not handled now.
func (r *taskRunner) sweepPayloads() {
	entries, err := os.ReadDir(r.payloadDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		id, num, ok := strings.Cut(e.Name(), ".")
		n, err := strconv.Atoi(num)
		if !ok || err != nil || !api.ValidTaskID(id) {
			continue // not an attempt's
		}
		r.mu.Lock()
		inUse := r.active[id][n] != nil
		r.mu.Unlock()
		if !inUse {
			r.removePayload(id, n)
		}
	}
}

func (r *taskRunner) payloadPath(id string, n int) string {
	return filepath.Join(r.payloadDir, attemptKey(id, n), "payload")
}

func (r *taskRunner) removePayload(id string, n int) {
	if err := os.RemoveAll(filepath.Dir(r.payloadPath(id, n))); err != nil {
		r.log.Warn("remove task payload", "task", id, "attempt", n, "err", err)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// timeoutText renders a timeout as the user gave it ("30s").
func timeoutText(d time.Duration) string { return fmt.Sprint(api.Duration(d)) }
