package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"

	"berth/api"
	"berth/internal/client"
)

// dockerResult is the comparison of berth with docker run on real Docker.
type dockerResult struct {
	n, parallel int

	floor         time.Duration // xargs -P: first docker run to the last one returned
	floorFailed   int
	floorLives    []life
	berth         time.Duration // submit to the last task ended
	submit        time.Duration // the batch request
	ended         string        // how the end was seen: watch or poll
	states        map[string]int
	tasks         []api.Task
	berthLives    []life
	leftCount     int           // task containers still there containersGone after the last end
	goneAfterLast time.Duration // last task ended until no task container was left
	berthHWM      float64       // MiB
	phases        []string      // load and other users during each phase
	foreign       int           // containers others created during the phases
	notes         []string
	warnings      string
}

func (d *dockerResult) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	d.notes = append(d.notes, s)
	logf("note: %s", s)
}

// runDocker starts berth up, runs the floor, then the same tasks through
// berth, and cleans up whatever happens. The exit code: 0 done, 1 failed,
// 130 interrupted.
func runDocker(ctx context.Context) (*dockerResult, int) {
	tmp, err := os.MkdirTemp("", "berth-tasks-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench tasks:", err)
		return nil, 1
	}
	runID := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().Unix())
	var b *berthUp
	var ev *engineEvents
	failed := true
	defer func() {
		ev.stop()
		b.stop()
		removeContainers(floorLabel + "=" + runID)
		if b != nil && b.cluster != "" {
			removeContainers("berth.cluster=" + b.cluster)
		}
		if *keep || failed {
			fmt.Fprintf(os.Stderr, "bench tasks: kept %s\n", tmp)
		} else {
			os.RemoveAll(tmp)
		}
	}()

	res := &dockerResult{n: *nTasks, parallel: *parallel}
	err = func() error {
		if b, err = startBerth(ctx, *berthBin, tmp); err != nil {
			return err
		}
		if ev, err = watchEngine(time.Now(), b.cluster, runID); err != nil {
			return err
		}
		if err := res.runFloor(ctx, ev, runID); err != nil {
			return fmt.Errorf("floor: %w", err)
		}
		time.Sleep(2 * time.Second) // the floor's last removals settle
		if err := res.runBerth(ctx, b, ev); err != nil {
			return fmt.Errorf("berth: %w", err)
		}
		res.berthHWM = b.peakRSS()
		time.Sleep(time.Second) // the last destroy events arrive
		return nil
	}()
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench tasks: interrupted; cleaning up")
			return nil, 130
		}
		fmt.Fprintln(os.Stderr, "bench tasks: FAILED:", err)
		if b != nil {
			fmt.Fprintf(os.Stderr, "bench tasks: last lines of %s:\n%s\n", b.logPath, b.logTail(30))
		}
		return nil, 1
	}
	ev.stop()
	res.floorLives = ev.lives("floor", time.Time{})
	res.berthLives = ev.lives("berth", time.Time{})
	res.warnings = b.warnings()
	failed = false
	return res, 0
}

// phase runs f and records how busy the machine was meanwhile.
func (d *dockerResult) phase(ev *engineEvents, name string, f func() error) error {
	l0, t0 := loadavg(), time.Now()
	err := f()
	n := ev.foreign(t0, time.Now())
	d.foreign += n
	d.phases = append(d.phases, fmt.Sprintf("%s: load %s -> %s, %d containers created by others", name, l0, loadavg(), n))
	return err
}

// runFloor: the same n containers with docker run --rm, parallel at a time.
func (d *dockerResult) runFloor(ctx context.Context, ev *engineEvents, runID string) error {
	logf("floor: %d x docker run --rm %s true, xargs -P %d", d.n, benchImage, d.parallel)
	var seq strings.Builder
	for i := range d.n {
		fmt.Fprintln(&seq, i)
	}
	return d.phase(ev, "floor", func() error {
		cmd := exec.CommandContext(ctx, "xargs", "-P", fmt.Sprint(d.parallel), "-I{}",
			"docker", "run", "--rm", "--label", floorLabel+"="+runID, "--label", "berth-tasks-bench.i={}", benchImage, "true")
		cmd.Stdin = strings.NewReader(seq.String())
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		d.floor = time.Since(t0)
		if err != nil {
			// xargs exits 123 when a command failed; count them from the events below.
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 123 {
				return fmt.Errorf("xargs docker run: %v: %s", err, strings.TrimSpace(string(out)))
			}
			d.note("floor: some docker run failed: %s", strings.TrimSpace(string(out)))
		}
		logf("floor: %d containers in %.2fs", d.n, d.floor.Seconds())
		return nil
	})
}

// runBerth submits n tasks in one request to a queue limited to parallel
// and waits for all of them to end, then for their containers to be gone.
func (d *dockerResult) runBerth(ctx context.Context, b *berthUp, ev *engineEvents) error {
	if _, err := b.cli(ctx, "queue", "set", benchQueue, "--concurrency", fmt.Sprint(d.parallel)); err != nil {
		return err
	}
	specs := make([]api.TaskSpec, d.n)
	for i := range specs {
		specs[i] = api.TaskSpec{Image: benchImage, Command: []string{"true"}, Queue: benchQueue}
	}
	logf("berth: %d tasks of %s true in one POST /v1/tasks, queue %s with concurrency %d", d.n, benchImage, benchQueue, d.parallel)
	var lastEnd time.Time
	err := d.phase(ev, "berth", func() error {
		w, err := startEndWatch(ctx, b.client)
		if err != nil {
			return err
		}
		defer w.stop()
		t0 := time.Now()
		submitted, err := b.client.SubmitTasks(ctx, specs)
		d.submit = time.Since(t0)
		if err != nil {
			return fmt.Errorf("submit: %w", err)
		}
		if len(submitted.Items) != d.n {
			return fmt.Errorf("submit: %d tasks in the answer, not %d", len(submitted.Items), d.n)
		}
		ids := make([]string, len(submitted.Items))
		for i, t := range submitted.Items {
			ids[i] = t.ID
		}
		lastEnd, d.ended, err = w.waitEnded(ctx, b.client, ids, 20*time.Minute)
		if err != nil {
			return err
		}
		d.berth = lastEnd.Sub(t0)
		logf("berth: %d tasks ended %.2fs after the submit (seen by %s)", d.n, d.berth.Seconds(), d.ended)
		return nil
	})
	if err != nil {
		return err
	}

	l, err := b.client.ListTasks(ctx, client.TaskFilter{Queue: benchQueue, Limit: -1})
	if err != nil {
		return err
	}
	d.tasks = l.Items
	d.states = map[string]int{}
	for _, t := range d.tasks {
		d.states[t.State]++
	}

	gone, left, err := waitNoContainers(ctx, "berth.cluster="+b.cluster, containersGone)
	if err != nil {
		return err
	}
	d.leftCount, d.goneAfterLast = left, gone.Sub(lastEnd)
	if left > 0 {
		d.note("%d task containers still there %s after the last task ended", left, containersGone)
	}
	return nil
}

// endWatch follows the tasks through the API's watch and remembers when
// each reached a terminal state.
type endWatch struct {
	cancel context.CancelFunc
	events <-chan api.WatchEvent[api.Task]
	errc   <-chan error
	ended  map[string]time.Time
}

func startEndWatch(ctx context.Context, c *client.Client) (*endWatch, error) {
	l, err := c.ListTasks(ctx, client.TaskFilter{Queue: benchQueue, Limit: 1})
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	events, errc := c.WatchTasks(wctx, client.TaskFilter{Queue: benchQueue}, l.Revision)
	return &endWatch{cancel: cancel, events: events, errc: errc, ended: map[string]time.Time{}}, nil
}

func (w *endWatch) stop() { w.cancel() }

// waitEnded returns when the last of ids was seen ended. Should the watch
// break, it polls the list of active tasks instead (and says so).
func (w *endWatch) waitEnded(ctx context.Context, c *client.Client, ids []string, timeout time.Duration) (time.Time, string, error) {
	deadline := time.After(timeout)
	remaining := func() int {
		n := 0
		for _, id := range ids {
			if _, ok := w.ended[id]; !ok {
				n++
			}
		}
		return n
	}
	last := time.Time{}
	for remaining() > 0 {
		select {
		case <-ctx.Done():
			return last, "", ctx.Err()
		case <-deadline:
			return last, "", fmt.Errorf("%d of %d tasks not ended within %s", remaining(), len(ids), timeout)
		case ev, ok := <-w.events:
			if !ok {
				err := <-w.errc
				logf("berth: the task watch broke (%v); polling instead", err)
				at, err := pollEnded(ctx, c, timeout)
				return at, "polling every 50ms, the watch broke", err
			}
			if ev.Type == "put" && api.TaskTerminal(ev.Object.State) {
				if _, seen := w.ended[ev.Object.ID]; !seen {
					last = time.Now()
					w.ended[ev.Object.ID] = last
				}
			}
		}
	}
	return last, "the API's watch", nil
}

func pollEnded(ctx context.Context, c *client.Client, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		l, err := c.ListTasks(ctx, client.TaskFilter{Queue: benchQueue, Active: true, Limit: -1})
		at := time.Now()
		if err == nil && len(l.Items) == 0 {
			return at, nil
		}
		select {
		case <-ctx.Done():
			return at, ctx.Err()
		case <-time.After(pollEvery):
		}
	}
	return time.Now(), fmt.Errorf("tasks still active after %s", timeout)
}

// stages describes where berth's time per task went, from the records
// (server clock): waiting in the queue, assignment to container start,
// the run, and how soon a freed slot was taken again.
func (d *dockerResult) stages() []string {
	var queued, starting, running, refill []time.Duration
	var ends, assigns []time.Time
	attempts := 0
	for _, t := range d.tasks {
		attempts += len(t.Attempts)
		if !t.Ended.IsZero() {
			ends = append(ends, t.Ended)
		}
		for i, a := range t.Attempts {
			assigns = append(assigns, a.Created)
			if i == 0 {
				queued = append(queued, a.Created.Sub(t.Created))
			}
			if !a.Started.IsZero() {
				starting = append(starting, a.Started.Sub(a.Created))
				if !a.Ended.IsZero() {
					running = append(running, a.Ended.Sub(a.Started))
				}
			}
		}
	}
	sortTimes(ends)
	sortTimes(assigns)
	// The k-th assignment beyond the first `parallel` waited for the k-th end.
	for k := 0; k+d.parallel < len(assigns) && k < len(ends); k++ {
		refill = append(refill, assigns[k+d.parallel].Sub(ends[k]))
	}
	return []string{
		fmt.Sprintf("attempts %d for %d tasks", attempts, len(d.tasks)),
		"attempt assigned -> container started " + stats(starting),
		"container started -> ended (as reported) " + stats(running),
		"a task ended -> the next attempt assigned in its slot " + stats(refill),
		"submitted -> first attempt assigned " + stats(queued),
	}
}

func sortTimes(ts []time.Time) {
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
}
