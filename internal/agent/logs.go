package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"berth/api"
	"berth/internal/runtime"
)

// InstanceLogs streams an instance's container output (apiserver.LogSource).
// A follow goes on across the container's restarts, with each run's lines
// once, until the container is removed or ctx ends.
func (a *Agent) InstanceLogs(ctx context.Context, inst api.Instance, follow bool, tail int) (io.ReadCloser, error) {
	id := inst.Status.ContainerID
	if id == "" {
		return nil, errors.New("no container yet")
	}
	if !follow {
		return a.Runtime.Logs(ctx, id, false, tail)
	}
	c, err := a.Runtime.Inspect(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("inspect container: %w", err)
	}
	f := &logFollow{rt: a.Runtime, log: a.Log, c: c}
	if tail == 0 {
		// The lines from before the follow are not wanted after a restart
		// either. The engine runs on this host: its clock is ours.
		f.last = time.Now()
	}
	rc, err := a.Runtime.Logs(ctx, id, true, tail, runtime.LogOptions{Timestamps: true})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	f.out = pw
	go f.run(ctx, rc)
	return &followStream{PipeReader: pr, cancel: cancel}, nil
}

// followStream is the reader's side of a logFollow; closing it ends the follow.
type followStream struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (s *followStream) Close() error {
	s.cancel()
	return s.PipeReader.Close()
}

// logFollow follows one container's log through its runs. The engine ends
// a log stream when the container stops; when the container starts again
// the log is opened again from just after the last line passed on, which
// the engine's timestamps tell.
type logFollow struct {
	rt   runtime.Runtime
	log  *slog.Logger
	c    runtime.Container // as inspected for the run being followed
	out  *io.PipeWriter
	last time.Time // engine time of the last line passed on
}

func (f *logFollow) run(ctx context.Context, rc io.ReadCloser) {
	for {
		if err := f.copy(ctx, rc); err != nil {
			f.out.CloseWithError(err)
			return
		}
		again, err := f.nextRun(ctx)
		if err != nil || !again {
			f.out.CloseWithError(err) // nil: the reader sees io.EOF
			return
		}
		var since time.Time
		if !f.last.IsZero() {
			since = f.last.Add(time.Nanosecond)
		}
		rc, err = f.rt.Logs(ctx, f.c.ID, true, -1, runtime.LogOptions{Since: since, Timestamps: true})
		if errors.Is(err, runtime.ErrNotFound) {
			err = nil // removed meanwhile: its log is over
		}
		if err != nil {
			f.out.CloseWithError(err)
			return
		}
	}
}

// copy passes one stream's lines on without their timestamps. It returns
// nil when the stream ended, whether the container stopped or the
// engine's connection broke: nextRun tells which.
func (f *logFollow) copy(ctx context.Context, rc io.ReadCloser) error {
	defer rc.Close()
	defer context.AfterFunc(ctx, func() { rc.Close() })()
	br := bufio.NewReaderSize(rc, 64<<10)
	lineStart := true
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			text := chunk
			if lineStart {
				text = f.unstamp(chunk)
			}
			lineStart = chunk[len(chunk)-1] == '\n'
			if _, werr := f.out.Write(text); werr != nil {
				return werr // the reader went away
			}
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		}
		if !errors.Is(err, io.EOF) {
			f.log.Debug("log stream broke", "container", shortID(f.c.ID), "err", err)
		}
		if !lineStart { // a run's last line without its newline
			if _, werr := f.out.Write([]byte("\n")); werr != nil {
				return werr
			}
		}
		return nil
	}
}

// unstamp cuts the engine's timestamp off a line and keeps it as the last
// time seen. A line without one is passed on whole.
func (f *logFollow) unstamp(line []byte) []byte {
	stamp, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok {
		return line
	}
	t, err := time.Parse(time.RFC3339Nano, string(stamp))
	if err != nil {
		return line
	}
	f.last = t
	return rest
}

// nextRun waits, after a log stream ended, until the container has a run
// not followed yet (true) or is gone (false). A container still running
// the same run when a second look (after an event or a second) finds it
// so had its stream broken, not its run: true too.
func (f *logFollow) nextRun(ctx context.Context) (bool, error) {
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Subscribed before the first look, so that no start is missed.
	events, errs := f.rt.Events(ectx, instanceLabels(f.c.Labels))
	for looked := false; ; looked = true {
		c, err := f.rt.Inspect(ctx, f.c.ID)
		switch {
		case errors.Is(err, runtime.ErrNotFound):
			return false, nil
		case err != nil:
			return false, fmt.Errorf("inspect container: %w", err)
		case !c.StartedAt.Equal(f.c.StartedAt) || (c.Running && looked):
			f.c = c
			return true, nil
		}
		var recheck <-chan time.Time
		if c.Running || events == nil {
			recheck = time.After(time.Second)
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-recheck:
		case _, ok := <-events: // any event of the instance: look again
			if !ok {
				events = nil
			}
		case err := <-errs:
			f.log.Debug("engine events broke; polling for the container's restart", "container", shortID(f.c.ID), "err", err)
			events, errs = nil, nil
		}
	}
}

// instanceLabels picks the labels that select the events of a container's
// instance.
func instanceLabels(labels map[string]string) map[string]string {
	out := map[string]string{}
	for _, k := range []string{runtime.LabelCluster, runtime.LabelInstance} {
		if v := labels[k]; v != "" {
			out[k] = v
		}
	}
	return out
}

func shortID(id string) string {
	return id[:min(12, len(id))]
}
