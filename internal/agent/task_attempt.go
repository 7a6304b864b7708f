package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"berth/api"
	"berth/internal/client"
	"berth/internal/runtime"
)

// Why an attempt was stopped before its container exited by itself.
const (
	stopNone = iota
	stopTimeout
	stopCancel
	stopAbandon
)

// runAttempt handles one attempt from start to end: start (or adopt) its
// container, wait for it to exit, be stopped on a timeout or a cancel,
// save its logs, report the end, then remove the container. It returns
// false when ctx ended first: the attempt is left for the next start.
func (r *taskRunner) runAttempt(ctx context.Context, run *attemptRun, t api.Task) bool {
	if t.Spec.Build != nil {
		return r.runBuild(ctx, run, t) // build.go: the engine builds, no container of ours
	}
	a := *t.Current()
	if isClosed(run.abandon) {
		return true
	}
	c, err := r.rt.Inspect(ctx, a.Container)
	var failed *api.TaskReport
	switch {
	case err == nil: // made by this agent before a restart: adopt it
		if !c.Running && c.StartedAt.IsZero() {
			c, failed = r.start(ctx, t, a, c.ID)
		}
	case !errors.Is(err, runtime.ErrNotFound):
		failed = platformFailure(t, a, "inspect container: %v", err)
	case a.State == api.TaskRunning:
		// The server saw it run, this process never did, and it is gone.
		rep := report(t, a)
		rep.State, rep.Platform, rep.Ended = api.AttemptLost, true, time.Now()
		rep.Error = "the container is gone (the agent or the engine restarted while it ran)"
		failed = &rep
	case isClosed(run.cancel):
		rep := report(t, a)
		rep.State, rep.Ended = api.TaskCancelled, time.Now()
		failed = &rep
	default:
		c, failed = r.create(ctx, t, a)
	}
	if ctx.Err() != nil {
		return false
	}
	if failed != nil {
		return r.end(ctx, t, a, *failed, c.ID, 0)
	}
	if a.State != api.TaskRunning || a.ContainerID != c.ID {
		rep := report(t, a)
		rep.State, rep.ContainerID, rep.Started = api.TaskRunning, c.ID, c.StartedAt
		r.reports.post(rep)
	}

	live := r.followLog(ctx, t.ID, a.N, c.ID)
	final, why, err := r.supervise(ctx, run, t, a, c)
	sent := live.stop()
	if ctx.Err() != nil {
		return false
	}
	if why == stopAbandon {
		r.log.Info("task attempt abandoned", "task", t.ID, "attempt", a.N)
		r.remove(ctx, t.ID, a.N, c.ID)
		return true
	}
	rep := outcome(t, a, c, final, why, err)
	return r.end(ctx, t, a, rep, c.ID, sent)
}

// end saves the logs, reports the end and only then removes the container:
// a crash in between leaves a container the next start removes, never an
// attempt without its logs.
// sent is how much of the log was uploaded while the attempt ran.
func (r *taskRunner) end(ctx context.Context, t api.Task, a api.Attempt, rep api.TaskReport, containerID string, sent int64) bool {
	// Without a container there is no output, but the log is marked
	// complete so that a follower ends at once; except for an attempt a
	// former agent ran, whose uploads are kept.
	if containerID != "" || rep.State != api.AttemptLost {
		rep.LogBytes, rep.LogTruncated = r.saveLog(ctx, t.ID, a.N, containerID, sent)
	}
	res, err := r.reports.send(ctx, rep)
	if err != nil {
		return false // ctx ended
	}
	r.log.Debug("task attempt ended", "task", t.ID, "attempt", a.N, "state", rep.State, "error", rep.Error, "applied", res.Applied)
	r.remove(ctx, t.ID, a.N, containerID)
	return true
}

func (r *taskRunner) remove(ctx context.Context, id string, n int, containerID string) {
	if containerID != "" {
		if err := r.rt.Remove(ctx, containerID); err != nil {
			r.log.Warn("remove task container", "task", id, "attempt", n, "err", err)
		}
	}
	r.removePayload(id, n)
}

// create makes and starts the attempt's container.
func (r *taskRunner) create(ctx context.Context, t api.Task, a api.Attempt) (runtime.Container, *api.TaskReport) {
	spec := t.Spec
	ictx, cancel := context.WithTimeout(ctx, imageTimeout)
	err := r.rt.EnsureImage(ictx, spec.Image)
	cancel()
	switch {
	case ctx.Err() != nil:
		return runtime.Container{}, nil
	case errors.Is(err, runtime.ErrImageNotFound):
		return runtime.Container{}, imageMissing(t, a)
	case err != nil:
		return runtime.Container{}, platformFailure(t, a, "image %s: %v", spec.Image, err)
	}
	env := map[string]string{}
	for k, v := range spec.Env {
		env[k] = v
	}
	env["BERTH_TASK_ID"], env["BERTH_ATTEMPT"] = t.ID, strconv.Itoa(a.N)
	var mounts []runtime.Mount
	if t.PayloadSize > 0 {
		path, err := r.writePayload(ctx, t.ID, a.N)
		if err != nil {
			if ctx.Err() != nil {
				return runtime.Container{}, nil
			}
			return runtime.Container{}, platformFailure(t, a, "payload: %v", err)
		}
		mounts = []runtime.Mount{{Source: path, Target: "/task/payload", ReadOnly: true}}
		env["BERTH_PAYLOAD"] = "/task/payload"
	}
	id, err := r.rt.Create(ctx, runtime.ContainerSpec{
		Name:        a.Container,
		Image:       spec.Image,
		Command:     spec.Command,
		Env:         env,
		NanoCPUs:    int64(spec.Resources.CPU) * 1_000_000,
		MemoryBytes: int64(spec.Resources.Memory),
		PidsLimit:   spec.Resources.Pids,
		Init:        true,
		Mounts:      mounts,
		Labels: map[string]string{
			runtime.LabelCluster: r.cluster, runtime.LabelNode: r.node,
			runtime.LabelTask: t.ID, runtime.LabelAttempt: strconv.Itoa(a.N),
		},
	})
	switch {
	case errors.Is(err, runtime.ErrConflict): // there after all: adopt it
		c, err := r.rt.Inspect(ctx, a.Container)
		if err != nil {
			return runtime.Container{}, platformFailure(t, a, "inspect container: %v", err)
		}
		if c.Running || !c.StartedAt.IsZero() {
			return c, nil
		}
		id = c.ID
	case errors.Is(err, runtime.ErrImageNotFound):
		return runtime.Container{}, imageMissing(t, a)
	case errors.Is(err, runtime.ErrInvalidSpec):
		return runtime.Container{}, configRefused(t, a, err)
	case err != nil:
		if ctx.Err() != nil {
			return runtime.Container{}, nil
		}
		return runtime.Container{}, platformFailure(t, a, "create container: %v", err)
	}
	return r.start(ctx, t, a, id)
}

// start starts a created container. A command that cannot be run is the
// task's failure (the engine says so with exit code 126 or 127); any other
// start error is the platform's.
func (r *taskRunner) start(ctx context.Context, t api.Task, a api.Attempt, id string) (runtime.Container, *api.TaskReport) {
	startErr := r.rt.Start(ctx, id)
	c, err := r.rt.Inspect(ctx, id)
	switch {
	case ctx.Err() != nil:
		return runtime.Container{ID: id}, nil
	case err != nil:
		return runtime.Container{ID: id}, platformFailure(t, a, "inspect container: %v", err)
	case startErr != nil && (c.ExitCode == 126 || c.ExitCode == 127):
		rep := report(t, a)
		code := c.ExitCode
		rep.State, rep.ExitCode, rep.Ended = api.TaskFailed, &code, time.Now()
		rep.Error = fmt.Sprintf("cannot run the command: %v", startErr)
		return c, &rep
	case startErr != nil:
		return c, platformFailure(t, a, "start container: %v", startErr)
	}
	return c, nil
}

// writePayload fetches the task's payload and writes it where the
// attempt's container mounts it from.
func (r *taskRunner) writePayload(ctx context.Context, id string, n int) (string, error) {
	var data []byte
	var err error
	for backoff := 200 * time.Millisecond; ; backoff *= 2 {
		data, err = r.api.TaskPayload(ctx, id)
		if err == nil || ctx.Err() != nil || client.IsStatus(err, 404) || backoff > 5*time.Second {
			break
		}
		sleep(ctx, backoff)
	}
	if err != nil {
		return "", fmt.Errorf("fetch: %w", err)
	}
	path := r.payloadPath(id, n)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	// Readable by any user the image runs as; the directory keeps others out.
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// supervise waits for the container to exit, stopping it first on the
// task's timeout (counted from the container's start, so that it holds
// across an agent restart), a cancel, or when the attempt is abandoned.
func (r *taskRunner) supervise(ctx context.Context, run *attemptRun, t api.Task, a api.Attempt, c runtime.Container) (runtime.Container, int, error) {
	wctx, stopWait := context.WithCancel(ctx)
	defer stopWait()
	type result struct {
		c   runtime.Container
		err error
	}
	waited := make(chan result, 1)
	go func() {
		c, err := r.rt.Wait(wctx, c.ID)
		waited <- result{c, err}
	}()
	var deadline <-chan time.Time
	if timeout := t.Spec.Timeout; timeout != nil && *timeout > 0 {
		timer := time.NewTimer(time.Until(c.StartedAt.Add(timeout.D())))
		defer timer.Stop()
		deadline = timer.C
	}
	why := stopNone
	select {
	case w := <-waited:
		return w.c, stopNone, w.err
	case <-ctx.Done():
		return runtime.Container{}, stopNone, ctx.Err()
	case <-deadline:
		why = stopTimeout
	case <-run.cancel:
		why = stopCancel
	case <-run.abandon:
		return runtime.Container{}, stopAbandon, nil // removed at once
	}
	grace := api.DefaultStopGrace
	if t.Spec.StopGrace != nil {
		grace = t.Spec.StopGrace.D()
	}
	if err := r.rt.Stop(ctx, c.ID, grace); err != nil && ctx.Err() == nil {
		r.log.Warn("stop task container", "task", t.ID, "attempt", a.N, "err", err)
	}
	select {
	case w := <-waited:
		return w.c, why, w.err
	case <-ctx.Done():
		return runtime.Container{}, why, ctx.Err()
	}
}

// outcome is the end report of an attempt whose container ran.
func outcome(t api.Task, a api.Attempt, started, final runtime.Container, why int, waitErr error) api.TaskReport {
	rep := report(t, a)
	rep.ContainerID, rep.Started = started.ID, started.StartedAt
	if waitErr != nil {
		rep.Ended, rep.Platform = time.Now(), true
		if errors.Is(waitErr, runtime.ErrNotFound) {
			rep.State, rep.Error = api.AttemptLost, "the container vanished while it ran"
		} else {
			rep.State, rep.Error = api.TaskFailed, fmt.Sprintf("wait for the container: %v", waitErr)
		}
		return rep
	}
	rep.Ended = final.FinishedAt
	if rep.Ended.Before(final.StartedAt) { // zero, or the engine's skew on short runs
		rep.Ended = final.StartedAt
	}
	code := final.ExitCode
	rep.ExitCode = &code
	switch {
	case why == stopTimeout:
		rep.State, rep.Error = api.TaskTimedOut, "timed out after "+timeoutText(t.Spec.Timeout.D())
	case why == stopCancel:
		rep.State = api.TaskCancelled
	case code == 0:
		rep.State = api.TaskSucceeded
	default:
		rep.State, rep.Error = api.TaskFailed, fmt.Sprintf("exited with code %d", code)
		if final.OOMKilled {
			rep.Error += fmt.Sprintf(" (killed: out of memory, limit %s)", t.Spec.Resources.Memory)
		}
	}
	return rep
}

func report(t api.Task, a api.Attempt) api.TaskReport {
	return api.TaskReport{ID: t.ID, Attempt: a.N}
}

func platformFailure(t api.Task, a api.Attempt, format string, args ...any) *api.TaskReport {
	rep := report(t, a)
	rep.State, rep.Platform, rep.Ended = api.TaskFailed, true, time.Now()
	rep.Error = fmt.Sprintf(format, args...)
	return &rep
}

func imageMissing(t api.Task, a api.Attempt) *api.TaskReport {
	rep := report(t, a)
	rep.State, rep.ImageMissing, rep.Ended = api.TaskFailed, true, time.Now()
	rep.Error = fmt.Sprintf("image %s is not present and could not be pulled", t.Spec.Image)
	return &rep
}

// configRefused is the end of an attempt whose container the engine
// refused to create as configured: the task fails at once, with the
// engine's own words, since every retry would be refused the same way.
func configRefused(t api.Task, a api.Attempt, err error) *api.TaskReport {
	rep := report(t, a)
	rep.State, rep.ConfigError, rep.Ended = api.TaskFailed, true, time.Now()
	rep.Error = runtime.ErrInvalidSpec.Error() + ": " + engineMessage(err)
	return &rep
}

// engineMessage is what the engine said, without the runtime's wrapping.
func engineMessage(err error) string {
	msg := err.Error()
	if _, after, ok := strings.Cut(msg, runtime.ErrInvalidSpec.Error()+": "); ok {
		msg = after
	}
	return strings.TrimPrefix(msg, "Error response from daemon: ")
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
