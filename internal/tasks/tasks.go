// Package tasks is the life of a task as pure functions: submitting,
// assigning an attempt, applying what an agent reports, cancelling, and the
// order in which queued tasks are dispatched. The API server and the task
// controller share it; it does no I/O.
package tasks

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"berth/api"
)

const (
	// Backoff between attempts: 1s doubling to 1m.
	backoffMin = time.Second
	backoffMax = time.Minute
	// MaxPlatformFailures bounds the attempts lost to the platform before
	// the task fails (so that a broken node cannot loop it forever).
	MaxPlatformFailures = 10
)

// ErrStale: the report is about an attempt that is no longer the task's
// current one, or the task has ended; it changes nothing.
var ErrStale = errors.New("stale report")

// New makes the record of a submitted, defaulted spec. The payload is
// kept apart: the returned task has none, only its size.
func New(id string, spec api.TaskSpec, now time.Time) api.Task {
	payload := len(spec.Payload)
	spec.Payload = nil
	return api.Task{ID: id, Spec: spec, State: api.TaskQueued, PayloadSize: payload, Created: now, Updated: now}
}

// ContainerName is the name of an attempt's container: unique per cluster,
// task and attempt, so that two attempts never share one and an agent
// finds an attempt's container after a restart.
func ContainerName(cluster, id string, attempt int) string {
	if len(cluster) > 8 {
		cluster = cluster[:8]
	}
	return fmt.Sprintf("berth-%s-task-%s.%d", cluster, id, attempt)
}

// Ready reports whether a queued or retrying task may start now.
func Ready(t *api.Task, now time.Time) bool {
	switch t.State {
	case api.TaskQueued:
		return !t.CancelRequested
	case api.TaskRetrying:
		return !t.CancelRequested && !now.Before(t.NotBefore)
	}
	return false
}

// Assign starts the next attempt of a ready task on node.
func Assign(t *api.Task, cluster, node string, now time.Time) {
	n := len(t.Attempts) + 1
	t.Attempts = append(t.Attempts, api.Attempt{
		N: n, Node: node, Container: ContainerName(cluster, t.ID, n),
		State: api.AttemptStarting, Created: now,
	})
	t.State, t.Node, t.NotBefore, t.Updated = api.TaskRunning, node, time.Time{}, now
}

// Cancel ends a task that is not running at once; a running one is marked,
// and ends when its agent reports the container stopped. It returns false
// when the task has ended already.
func Cancel(t *api.Task, now time.Time) bool {
	if api.TaskTerminal(t.State) {
		return false
	}
	t.CancelRequested, t.Updated = true, now
	if t.State != api.TaskRunning {
		end(t, api.TaskCancelled, "cancelled before it ran to the end", now)
	}
	return true
}

// Apply applies an agent's report on the task's current attempt.
func Apply(t *api.Task, r api.TaskReport, now time.Time) error {
	a := t.Current()
	if t.State != api.TaskRunning || a == nil || a.N != r.Attempt {
		return ErrStale
	}
	if !reportStates[r.State] { // before any change: a bad report changes nothing
		return fmt.Errorf("report state %q is not running, succeeded, failed, timed_out, cancelled or lost", r.State)
	}
	if r.ContainerID != "" {
		a.ContainerID = r.ContainerID
	}
	if !r.Started.IsZero() {
		a.Started = r.Started
	}
	t.Updated = now
	if r.State == api.TaskRunning {
		a.State = api.TaskRunning
		return nil
	}
	a.State, a.ExitCode, a.Error = r.State, r.ExitCode, r.Error
	a.Ended = r.Ended
	if a.Ended.IsZero() {
		a.Ended = now
	}
	a.LogBytes, a.LogTruncated = r.LogBytes, r.LogTruncated
	if r.ExitCode != nil {
		t.ExitCode = r.ExitCode
	}
	t.Node = ""
	switch {
	case r.State == api.TaskSucceeded:
		end(t, api.TaskSucceeded, "", now)
	case r.State == api.TaskCancelled || t.CancelRequested:
		a.State = api.TaskCancelled
		end(t, api.TaskCancelled, "cancelled while running", now)
	case r.ImageMissing || r.ConfigError: // no retry can fix these
		msg := r.Error
		switch {
		case msg != "":
		case r.ImageMissing:
			msg = fmt.Sprintf("image %s is missing", t.Spec.Image)
		default:
			msg = "the engine refused the container's configuration"
		}
		end(t, api.TaskFailed, msg, now)
	case r.Platform || r.State == api.AttemptLost:
		a.Platform = true
		if a.State != api.AttemptLost {
			a.State = api.AttemptLost
		}
		t.PlatformFailures++
		if t.PlatformFailures >= MaxPlatformFailures {
			end(t, api.TaskFailed, fmt.Sprintf("%d attempts lost to the platform; last: %s", t.PlatformFailures, r.Error), now)
			return nil
		}
		retry(t, t.PlatformFailures, now)
	case r.State == api.TaskFailed || r.State == api.TaskTimedOut:
		t.UserFailures++
		if t.UserFailures > t.Spec.Retries {
			msg := r.Error
			if msg == "" && r.ExitCode != nil {
				msg = fmt.Sprintf("exited with code %d", *r.ExitCode)
			}
			end(t, r.State, msg, now)
			return nil
		}
		retry(t, t.UserFailures, now)
	}
	return nil
}

var reportStates = map[string]bool{api.TaskRunning: true, api.TaskSucceeded: true, api.TaskFailed: true,
	api.TaskTimedOut: true, api.TaskCancelled: true, api.AttemptLost: true}

// Lose ends the current attempt of a running task as lost to the platform
// (its node went down, or its container vanished), as if its agent had
// reported so.
func Lose(t *api.Task, why string, now time.Time) error {
	a := t.Current()
	if a == nil {
		return ErrStale
	}
	return Apply(t, api.TaskReport{ID: t.ID, Attempt: a.N, State: api.AttemptLost, Platform: true, Error: why}, now)
}

// Backoff is the wait before attempt n+1 after n failures.
func Backoff(failures int) time.Duration {
	d := backoffMin
	for i := 1; i < failures && d < backoffMax; i++ {
		d *= 2
	}
	return min(d, backoffMax)
}

func retry(t *api.Task, failures int, now time.Time) {
	t.State, t.NotBefore = api.TaskRetrying, now.Add(Backoff(failures))
}

func end(t *api.Task, state, msg string, now time.Time) {
	t.State, t.Error, t.Node, t.Ended, t.Updated = state, msg, "", now, now
	if state == api.TaskSucceeded {
		t.Error = ""
	}
}

// Order returns the ready tasks in the order they should start: queues
// take turns (so that a burst on one does not starve the others), and
// within a queue higher priority first, then oldest. A queue is skipped
// once it has as many running as its limit (limits[queue] > 0); running
// counts what each queue has running now.
func Order(ready []api.Task, running map[string]int, limits map[string]int) []api.Task {
	byQueue := map[string][]api.Task{}
	for _, t := range ready {
		byQueue[t.Spec.Queue] = append(byQueue[t.Spec.Queue], t)
	}
	queues := make([]string, 0, len(byQueue))
	for q, ts := range byQueue {
		queues = append(queues, q)
		sort.Slice(ts, func(i, j int) bool {
			pi, pj := priority(&ts[i]), priority(&ts[j])
			if pi != pj {
				return pi > pj
			}
			if !ts[i].Created.Equal(ts[j].Created) {
				return ts[i].Created.Before(ts[j].Created)
			}
			return ts[i].ID < ts[j].ID
		})
	}
	sort.Strings(queues)
	room := map[string]int{}
	for _, q := range queues {
		room[q] = len(byQueue[q])
		if l := limits[q]; l > 0 {
			room[q] = min(room[q], max(0, l-running[q]))
		}
	}
	out := make([]api.Task, 0, len(ready))
	for taken := 0; ; taken++ {
		added := false
		for _, q := range queues {
			if taken < room[q] {
				out = append(out, byQueue[q][taken])
				added = true
			}
		}
		if !added {
			return out
		}
	}
}

func priority(t *api.Task) int {
	if t.Spec.Priority == nil {
		return api.DefaultPriority
	}
	return *t.Spec.Priority
}
