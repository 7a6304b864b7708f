package apiserver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"berth/api"
	"berth/internal/store"
	"berth/internal/tasklog"
)

const (
	// logPoll is how often a follower looks at the task while it waits
	// for an attempt to exist or to end.
	logPoll = 500 * time.Millisecond
	// logGrace is how long a follower waits for the final piece of a log
	// after its attempt has ended (the agent uploads it after the end; an
	// agent that died never does).
	logGrace = 10 * time.Second
)

func (s *Server) taskLogsOr503(w http.ResponseWriter) bool {
	if s.TaskLogs == nil {
		writeError(w, http.StatusServiceUnavailable, "", "this server keeps no task logs")
		return false
	}
	return true
}

// GET /v1/tasks/{id}/logs?attempt=N&follow=true: an attempt's output as
// plain text (attempt 0 or none: the latest). With follow, the answer
// streams what the agent uploads until the log is final.
func (s *Server) taskLogs(w http.ResponseWriter, r *http.Request) {
	if !s.taskLogsOr503(w) {
		return
	}
	q := r.URL.Query()
	follow := q.Get("follow") == "true"
	attempt := 0
	if v := q.Get("attempt"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > tasklog.MaxAttempt {
			writeError(w, http.StatusBadRequest, "attempt", "attempt: %q is not an attempt number", v)
			return
		}
		attempt = n
	}
	t, ok := s.getTaskOr404(w, r)
	if !ok {
		return
	}
	if !follow && attempt > len(t.Attempts) {
		writeError(w, http.StatusNotFound, "attempt", "task %s has no attempt %d (it has %d)", t.ID, attempt, len(t.Attempts))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	flush := func() {}
	if f, ok := w.(http.Flusher); ok {
		flush = f.Flush
	}
	flush() // a follower learns at once that its request is taken
	ctx := r.Context()
	if attempt == 0 && len(t.Attempts) > 0 {
		attempt = len(t.Attempts)
	}
	if follow && (attempt == 0 || attempt > len(t.Attempts)) {
		if attempt, ok = s.waitForAttempt(ctx, t.ID, attempt); !ok {
			return
		}
	}
	if attempt == 0 {
		return // no attempt yet, and not following
	}
	var pos int64
	var endedAt time.Time // when the follower saw the attempt end
	poll := time.NewTicker(logPoll)
	defer poll.Stop()
	for {
		changed := s.TaskLogs.Changed(t.ID, attempt)
		rc, _, final, err := s.TaskLogs.Reader(t.ID, attempt, pos)
		if err != nil {
			s.Log.Error("task log", "task", t.ID, "attempt", attempt, "err", err)
			return
		}
		n, err := io.Copy(w, rc)
		rc.Close()
		pos += n
		if err != nil {
			return // the client went away
		}
		if n > 0 {
			flush()
			endedAt = time.Time{}
		}
		if !follow || final {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case now := <-poll.C:
			if !endedAt.IsZero() {
				if now.Sub(endedAt) > logGrace {
					return
				}
			} else if ended, size := s.attemptEnded(ctx, t.ID, attempt); ended {
				if size >= 0 && pos >= size {
					return // all its agent reported is here, final or not
				}
				endedAt = now
			}
		}
	}
}

// waitForAttempt waits until the task has attempt n (0: any), and returns
// it; false when the task ended without it, or is gone.
func (s *Server) waitForAttempt(ctx context.Context, id string, n int) (int, bool) {
	tick := time.NewTicker(logPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0, false
		case <-tick.C:
		}
		t, err := store.Tasks.Get(ctx, s.Store, id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return 0, false
		case err != nil:
			continue // the store is away for now
		case n == 0 && len(t.Attempts) > 0:
			return len(t.Attempts), true
		case n > 0 && len(t.Attempts) >= n:
			return n, true
		case api.TaskTerminal(t.State):
			return 0, false
		}
	}
}

// attemptEnded reports whether an attempt is over (or its task gone), and
// the size of its output as its agent reported it at the end (-1: not
// known, e.g. an attempt lost with its agent).
func (s *Server) attemptEnded(ctx context.Context, id string, n int) (bool, int64) {
	t, err := store.Tasks.Get(ctx, s.Store, id)
	if errors.Is(err, store.ErrNotFound) {
		return true, -1
	}
	if err != nil || n > len(t.Attempts) {
		return false, -1
	}
	a := t.Attempts[n-1]
	switch a.State {
	case api.AttemptStarting, api.TaskRunning:
		return false, -1
	case api.AttemptLost:
		return true, -1
	}
	return true, a.LogBytes
}

// PUT /v1/tasks/{id}/attempts/{n}/log?offset=K&final=true: an agent
// uploads an attempt's output from byte K on.
func (s *Server) putTaskLog(w http.ResponseWriter, r *http.Request) {
	if !s.taskLogsOr503(w) {
		return
	}
	id := r.PathValue("id")
	if !api.ValidTaskID(id) {
		writeError(w, http.StatusNotFound, "", "task %q not found (not a task id)", id)
		return
	}
	n, err := strconv.Atoi(r.PathValue("n"))
	if err != nil || n < 1 || n > tasklog.MaxAttempt {
		writeError(w, http.StatusBadRequest, "attempt", "attempt: %q is not an attempt number", r.PathValue("n"))
		return
	}
	q := r.URL.Query()
	offset, err := strconv.ParseInt(q.Get("offset"), 10, 64)
	if err != nil || offset < 0 {
		writeError(w, http.StatusBadRequest, "offset", "offset: %q is not a byte offset", q.Get("offset"))
		return
	}
	if principalOf(r.Context()).role == api.RoleAgent { // only for the attempts on its node
		t, ok := s.getTaskOr404(w, r)
		if !ok || !s.ownTask(w, r, &t, n) {
			return
		}
	}
	data, ok := readBody(w, r)
	if !ok {
		return
	}
	err = s.TaskLogs.Write(id, n, offset, data, q.Get("final") == "true")
	switch {
	case errors.Is(err, tasklog.ErrGap):
		writeError(w, http.StatusBadRequest, "offset", "offset: %v", err)
	case err != nil:
		s.Log.Error("task log", "task", id, "attempt", n, "err", err)
		writeError(w, http.StatusInternalServerError, "", "%v", err)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}
