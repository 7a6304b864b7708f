package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"berth/api"
	"berth/internal/build"
	"berth/internal/client"
	"berth/internal/runtime"
)

// A build attempt runs no container of berth's: the engine's builder
// runs the steps. The agent streams the context from the server into the
// engine's build, saves the image and uploads it to the server, which
// pushes it into its registry with the revision added on top (a layer
// holding /app/REVISION, and the label: imagecopy.Addition). The log is the engine's output with berth's own lines.

// buildAPI is the part of the API a build uses; *client.Client has it.
type buildAPI interface {
	BuildContext(ctx context.Context, id string, attempt int) (io.ReadCloser, error)
	PutBuildImage(ctx context.Context, id string, attempt int, save io.ReadCloser) (api.BuildImageResult, error)
}

// buildLogReserve is the room kept at the end of a build's log for how it
// ended, however much the build printed.
const buildLogReserve = 16 << 10

// Why a build was stopped before it ended by itself.
var (
	errBuildCancelled = errors.New("cancelled")
	errBuildAbandoned = errors.New("abandoned")
	errBuildTimedOut  = errors.New("timed out")
)

// runBuild handles one attempt of a build from start to report, as
// runAttempt does for a container. It returns false when ctx ended first:
// the next start finds the attempt running and reports it lost (the
// engine stops a build whose client went away), so it is built again.
func (r *taskRunner) runBuild(ctx context.Context, run *attemptRun, t api.Task) bool {
	a := *t.Current()
	rep := report(t, a)
	switch {
	case isClosed(run.abandon):
		return true
	case a.State == api.TaskRunning:
		rep.State, rep.Platform, rep.Ended = api.AttemptLost, true, time.Now()
		rep.Error = "the agent restarted while it built"
		return r.sendEnd(ctx, rep)
	case isClosed(run.cancel):
		rep.State, rep.Ended = api.TaskCancelled, time.Now()
		return r.sendEnd(ctx, rep)
	}
	started := time.Now()
	rep.State, rep.Started = api.TaskRunning, started
	r.reports.post(rep)

	log := &buildLog{}
	live := r.uploadBuildLog(ctx, t.ID, a.N, log)
	bctx, stop := context.WithCancelCause(ctx)
	go r.watchBuild(bctx, stop, run, t, started)
	res, err := r.build(bctx, t, a, log)
	cause := context.Cause(bctx)
	stop(nil)
	sent := live.stop()
	if ctx.Err() != nil {
		return false
	}
	if errors.Is(cause, errBuildAbandoned) {
		r.log.Info("build attempt abandoned", "task", t.ID, "attempt", a.N)
		return true
	}
	rep = buildOutcome(t, a, started, res, err, cause)
	log.final(outcomeLine(t, rep, res))
	rep.LogBytes, rep.LogTruncated = r.saveBuildLog(ctx, t.ID, a.N, log, sent)
	return r.sendEnd(ctx, rep)
}

// watchBuild ends the build's context on a cancel, an abandon or the
// build's timeout.
func (r *taskRunner) watchBuild(ctx context.Context, stop context.CancelCauseFunc, run *attemptRun, t api.Task, started time.Time) {
	var deadline <-chan time.Time
	if to := t.Spec.Timeout; to != nil && *to > 0 {
		timer := time.NewTimer(time.Until(started.Add(to.D())))
		defer timer.Stop()
		deadline = timer.C
	}
	select {
	case <-ctx.Done():
	case <-run.cancel:
		stop(errBuildCancelled)
	case <-run.abandon:
		stop(errBuildAbandoned)
	case <-deadline:
		stop(errBuildTimedOut)
	}
}

func (r *taskRunner) sendEnd(ctx context.Context, rep api.TaskReport) bool {
	res, err := r.reports.send(ctx, rep)
	if err != nil {
		return false // ctx ended
	}
	r.log.Debug("build attempt ended", "task", rep.ID, "attempt", rep.Attempt, "state", rep.State, "error", rep.Error, "applied", res.Applied)
	return true
}

// build builds and uploads the image.
func (r *taskRunner) build(ctx context.Context, t api.Task, a api.Attempt, log io.Writer) (api.BuildImageResult, error) {
	b := t.Spec.Build
	bapi, ok := r.api.(buildAPI)
	builder, canBuild := r.rt.(runtime.Builder)
	if !ok || !canBuild {
		return api.BuildImageResult{}, errors.New("this agent's runtime cannot build images")
	}
	opts := runtime.BuildOptions{MemoryBytes: int64(t.Spec.Resources.Memory), NanoCPUs: int64(t.Spec.Resources.CPU) * 1_000_000}
	fmt.Fprintf(log, "berth: building %s on node %s (context %s; each step: memory %s, cpu %s)\n",
		t.Spec.Image, r.node, build.Size(b.ContextSize), t.Spec.Resources.Memory, t.Spec.Resources.CPU)
	body, err := bapi.BuildContext(ctx, t.ID, a.N)
	if err != nil {
		return api.BuildImageResult{}, fmt.Errorf("fetch the build context: %w", err)
	}
	id, err := builder.Build(ctx, body, opts, log)
	body.Close()
	if err != nil {
		return api.BuildImageResult{}, err
	}
	fmt.Fprintf(log, "berth: pushing %s into berth's registry, which adds %s and the label %s=%s\n",
		t.Spec.Image, api.RevisionFile, api.RevisionLabel, b.Revision)
	save, err := builder.SaveImage(ctx, id)
	if err != nil {
		return api.BuildImageResult{}, err
	}
	res, err := bapi.PutBuildImage(ctx, t.ID, a.N, save)
	if err != nil {
		return res, fmt.Errorf("push %s: %w", t.Spec.Image, err)
	}
	return res, nil
}

// buildOutcome is the end report of a build attempt. A failure of the
// build itself (the Dockerfile's) or a refusal of the server fails the
// build; anything else is the platform's, and the build runs again.
func buildOutcome(t api.Task, a api.Attempt, started time.Time, res api.BuildImageResult, err, cause error) api.TaskReport {
	rep := report(t, a)
	rep.Started, rep.Ended = started, time.Now()
	switch {
	case errors.Is(cause, errBuildCancelled):
		rep.State = api.TaskCancelled
	case errors.Is(cause, errBuildTimedOut):
		rep.State, rep.Error = api.TaskTimedOut, "timed out after "+timeoutText(t.Spec.Timeout.D())
	case err == nil:
		rep.State = api.TaskSucceeded
	case errors.Is(err, runtime.ErrBuildFailed): // the engine's words say it
		rep.State, rep.Error = api.TaskFailed, strings.TrimPrefix(err.Error(), runtime.ErrBuildFailed.Error()+": ")
	case isClientError(err) && !client.IsStatus(err, 409):
		rep.State, rep.Error = api.TaskFailed, err.Error()
	default:
		rep.State, rep.Platform, rep.Error = api.TaskFailed, true, err.Error()
	}
	return rep
}

// outcomeLine ends a build's log.
func outcomeLine(t api.Task, rep api.TaskReport, res api.BuildImageResult) string {
	switch {
	case rep.State == api.TaskSucceeded:
		line := fmt.Sprintf("berth: pushed %s, digest %s (%s; %d of its %d blobs were new to the registry)\n",
			res.Image, res.Digest, build.Size(res.Size), res.Uploaded, res.Layers+1)
		switch {
		case res.DeployError != "":
			line += "berth: not deployed: " + res.DeployError + "\n"
		case res.AppRevision > 0:
			line += fmt.Sprintf("berth: deployed %s as revision %d of app %s\n", res.Image, res.AppRevision, t.Spec.Build.App)
		}
		return line
	case rep.State == api.TaskCancelled:
		return "berth: build cancelled\n"
	case rep.Platform:
		return "berth: build not finished: " + rep.Error + " (it runs again)\n"
	}
	return "berth: build failed: " + rep.Error + "\n"
}

// uploadBuildLog uploads a build's log as it grows, every liveLogEvery.
func (r *taskRunner) uploadBuildLog(ctx context.Context, id string, n int, log *buildLog) *liveLog {
	l := &liveLog{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(liveLogEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-l.stopc:
				return
			case <-tick.C:
			}
			if chunk := log.from(l.sent); len(chunk) > 0 {
				if err := r.putLog(ctx, id, n, l.sent, chunk, false); err == nil {
					l.sent += int64(len(chunk))
				} else if ctx.Err() == nil {
					r.log.Debug("upload build log", "task", id, "attempt", n, "err", err)
				}
			}
		}
	}()
	return l
}

// saveBuildLog uploads the whole log as final, from what the live uploads
// gave the server, and returns its size and whether it was cut.
func (r *taskRunner) saveBuildLog(ctx context.Context, id string, n int, log *buildLog, sent int64) (int64, bool) {
	data, cut := log.all()
	r.putFinalLog(ctx, id, n, data, sent)
	return int64(len(data)), cut
}

// buildLog is a build's output, cut at api.MaxTaskLog less the room kept
// for how the build ended.
type buildLog struct {
	mu   sync.Mutex
	data []byte
	cut  bool
}

func (l *buildLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	room := api.MaxTaskLog - buildLogReserve - len(l.data)
	if len(p) <= room {
		l.data = append(l.data, p...)
		return len(p), nil
	}
	if !l.cut {
		l.data = append(l.data, p[:max(room, 0)]...)
		if len(l.data) > 0 && l.data[len(l.data)-1] != '\n' {
			l.data = append(l.data, '\n')
		}
		l.data = append(l.data, cutNote...)
		l.cut = true
	}
	return len(p), nil // the rest is dropped, not an error of the build
}

// final appends the closing lines, in the room kept for them.
func (l *buildLog) final(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.data) > 0 && l.data[len(l.data)-1] != '\n' {
		l.data = append(l.data, '\n')
	}
	l.data = append(l.data, s[:min(len(s), api.MaxTaskLog-len(l.data))]...)
}

func (l *buildLog) from(offset int64) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.data[min(offset, int64(len(l.data))):])
}

func (l *buildLog) all() ([]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.data), l.cut
}
