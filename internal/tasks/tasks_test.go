package tasks

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"berth/api"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newTask(retries int) api.Task {
	spec := api.TaskSpec{Image: "berth/busybox:1", Retries: retries}
	spec.Default()
	return New("0000000000000001", spec, t0)
}

func code(n int) *int { return &n }

// step is one thing that happens to a task: an assignment (report nil)
// or a report on the current attempt.
type step struct {
	report *api.TaskReport
	cancel bool
	// what the task looks like after it
	state    string
	user     int
	platform int
}

func ended(state string, exit int) *api.TaskReport {
	return &api.TaskReport{State: state, ExitCode: code(exit)}
}

func TestApply(t *testing.T) {
	assign := step{state: api.TaskRunning}
	cases := []struct {
		name    string
		retries int
		steps   []step
		err     string // of the terminal state
	}{
		{"success", 0, []step{
			assign,
			{report: &api.TaskReport{State: api.TaskRunning, ContainerID: "c1"}, state: api.TaskRunning},
			{report: ended(api.TaskSucceeded, 0), state: api.TaskSucceeded},
		}, ""},
		{"exit 3 with retries 2 fails on the third attempt", 2, []step{
			assign, {report: ended(api.TaskFailed, 3), state: api.TaskRetrying, user: 1},
			assign, {report: ended(api.TaskFailed, 3), state: api.TaskRetrying, user: 2},
			assign, {report: ended(api.TaskFailed, 3), state: api.TaskFailed, user: 3},
		}, "exited with code 3"},
		{"a retry can succeed", 1, []step{
			assign, {report: ended(api.TaskFailed, 1), state: api.TaskRetrying, user: 1},
			assign, {report: ended(api.TaskSucceeded, 0), state: api.TaskSucceeded, user: 1},
		}, ""},
		{"timeout uses a retry", 1, []step{
			assign, {report: &api.TaskReport{State: api.TaskTimedOut, Error: "timed out after 1s"}, state: api.TaskRetrying, user: 1},
			assign, {report: &api.TaskReport{State: api.TaskTimedOut, Error: "timed out after 1s"}, state: api.TaskTimedOut, user: 2},
		}, "timed out after 1s"},
		{"platform failures do not use retries", 0, []step{
			assign, {report: &api.TaskReport{State: api.TaskFailed, Platform: true, Error: "engine error"}, state: api.TaskRetrying, platform: 1},
			assign, {report: &api.TaskReport{State: api.AttemptLost, Error: "container vanished"}, state: api.TaskRetrying, platform: 2},
			assign, {report: ended(api.TaskSucceeded, 0), state: api.TaskSucceeded, platform: 2},
		}, ""},
		{"image missing fails at once", 5, []step{
			assign, {report: &api.TaskReport{State: api.TaskFailed, ImageMissing: true, Error: "image berth/nope:1 not found"}, state: api.TaskFailed},
		}, "image berth/nope:1 not found"},
		{"configuration refused by the engine fails at once, retries left", 5, []step{
			assign, {report: &api.TaskReport{State: api.TaskFailed, ConfigError: true,
				Error: "the engine refused the container's configuration: Minimum memory limit allowed is 6MB"}, state: api.TaskFailed},
		}, "the engine refused the container's configuration: Minimum memory limit allowed is 6MB"},
		{"configuration refused, no message", 2, []step{
			assign, {report: &api.TaskReport{State: api.TaskFailed, ConfigError: true}, state: api.TaskFailed},
		}, "the engine refused the container's configuration"},
		{"cancel while running", 3, []step{
			assign,
			{cancel: true, state: api.TaskRunning},
			{report: &api.TaskReport{State: api.TaskFailed, ExitCode: code(143)}, state: api.TaskCancelled},
		}, "cancelled while running"},
		{"cancel while retrying", 3, []step{
			assign, {report: ended(api.TaskFailed, 1), state: api.TaskRetrying, user: 1},
			{cancel: true, state: api.TaskCancelled, user: 1},
		}, "cancelled before it ran to the end"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			task := newTask(c.retries)
			now := t0
			var user, platform int // an assignment keeps the counts
			for i, s := range c.steps {
				if s.report != nil || s.cancel {
					user, platform = s.user, s.platform
				}
				s.user, s.platform = user, platform
				now = now.Add(time.Minute) // past any backoff
				switch {
				case s.cancel:
					if !Cancel(&task, now) {
						t.Fatalf("step %d: cancel refused in state %s", i, task.State)
					}
				case s.report == nil:
					if !Ready(&task, now) {
						t.Fatalf("step %d: task in state %s not ready to be assigned", i, task.State)
					}
					Assign(&task, "c0ffee", "n1", now)
				default:
					r := *s.report
					r.ID, r.Attempt = task.ID, len(task.Attempts)
					if err := Apply(&task, r, now); err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
				}
				if task.State != s.state || task.UserFailures != s.user || task.PlatformFailures != s.platform {
					t.Fatalf("step %d: state %s, user failures %d, platform failures %d; want %s, %d, %d",
						i, task.State, task.UserFailures, task.PlatformFailures, s.state, s.user, s.platform)
				}
			}
			if !api.TaskTerminal(task.State) {
				t.Fatalf("ended in state %s", task.State)
			}
			if task.Error != c.err {
				t.Errorf("error %q, want %q", task.Error, c.err)
			}
			if task.Ended.IsZero() || task.Node != "" {
				t.Errorf("ended %v, node %q: want an end time and no node", task.Ended, task.Node)
			}
			for i, a := range task.Attempts {
				if a.N != i+1 || a.Ended.IsZero() || a.Container != ContainerName("c0ffee", task.ID, i+1) {
					t.Errorf("attempt %d: %+v", i+1, a)
				}
			}
		})
	}
}

func TestApplyRecordsTheAttempt(t *testing.T) {
	task := newTask(0)
	Assign(&task, "c0ffee", "n1", t0)
	started, end := t0.Add(time.Second), t0.Add(3*time.Second)
	r := api.TaskReport{ID: task.ID, Attempt: 1, State: api.TaskFailed, ContainerID: "abc", Started: started, Ended: end,
		ExitCode: code(2), LogBytes: 1 << 20, LogTruncated: true}
	if err := Apply(&task, r, end.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	a := task.Attempts[0]
	if a.State != api.TaskFailed || a.ContainerID != "abc" || !a.Started.Equal(started) || !a.Ended.Equal(end) ||
		*a.ExitCode != 2 || !a.LogTruncated || a.LogBytes != 1<<20 || a.Node != "n1" {
		t.Errorf("attempt %+v", a)
	}
	if *task.ExitCode != 2 || !task.Ended.Equal(end.Add(time.Second)) {
		t.Errorf("task exit code %v, ended %v", *task.ExitCode, task.Ended)
	}
}

func TestPlatformFailuresGiveUp(t *testing.T) {
	task := newTask(100)
	now := t0
	for i := 1; i <= MaxPlatformFailures; i++ {
		now = now.Add(time.Hour)
		if !Ready(&task, now) {
			t.Fatalf("attempt %d: not ready in state %s", i, task.State)
		}
		Assign(&task, "c0ffee", "n1", now)
		if err := Lose(&task, "node n1 is down", now); err != nil {
			t.Fatal(err)
		}
		if a := task.Current(); !a.Platform || a.State != api.AttemptLost {
			t.Fatalf("attempt %d: %+v, want a lost platform attempt", i, a)
		}
	}
	if task.State != api.TaskFailed || task.UserFailures != 0 || task.PlatformFailures != MaxPlatformFailures {
		t.Fatalf("state %s, user %d, platform %d", task.State, task.UserFailures, task.PlatformFailures)
	}
	if !strings.Contains(task.Error, "node n1 is down") {
		t.Errorf("error %q does not say why", task.Error)
	}
}

func TestRetryWaitsForTheBackoff(t *testing.T) {
	task := newTask(3)
	Assign(&task, "c0ffee", "n1", t0)
	if err := Apply(&task, api.TaskReport{ID: task.ID, Attempt: 1, State: api.TaskFailed, ExitCode: code(1)}, t0); err != nil {
		t.Fatal(err)
	}
	if !task.NotBefore.Equal(t0.Add(time.Second)) {
		t.Fatalf("not before %v, want %v", task.NotBefore, t0.Add(time.Second))
	}
	if Ready(&task, t0.Add(999*time.Millisecond)) || !Ready(&task, t0.Add(time.Second)) {
		t.Error("ready before its backoff, or not after it")
	}
	Assign(&task, "c0ffee", "n1", t0.Add(time.Second))
	if !task.NotBefore.IsZero() || task.Node != "n1" || len(task.Attempts) != 2 {
		t.Errorf("after the second assignment: %+v", task)
	}
}

func TestStaleReports(t *testing.T) {
	task := newTask(1)
	Assign(&task, "c0ffee", "n1", t0)
	if err := Apply(&task, api.TaskReport{ID: task.ID, Attempt: 1, State: api.TaskFailed, ExitCode: code(1)}, t0); err != nil {
		t.Fatal(err)
	}
	// Retrying: a late report of attempt 1 changes nothing.
	if err := Apply(&task, api.TaskReport{ID: task.ID, Attempt: 1, State: api.TaskSucceeded, ExitCode: code(0)}, t0); !errors.Is(err, ErrStale) {
		t.Fatalf("report on a retrying task: %v, want ErrStale", err)
	}
	Assign(&task, "c0ffee", "n2", t0.Add(time.Minute))
	if err := Apply(&task, api.TaskReport{ID: task.ID, Attempt: 1, State: api.TaskRunning}, t0); !errors.Is(err, ErrStale) {
		t.Fatalf("report of attempt 1 while attempt 2 runs: %v, want ErrStale", err)
	}
	if err := Apply(&task, api.TaskReport{ID: task.ID, Attempt: 2, State: api.TaskSucceeded, ExitCode: code(0)}, t0); err != nil {
		t.Fatal(err)
	}
	if err := Apply(&task, api.TaskReport{ID: task.ID, Attempt: 2, State: api.TaskFailed, ExitCode: code(1)}, t0); !errors.Is(err, ErrStale) {
		t.Fatalf("report on an ended task: %v, want ErrStale", err)
	}
	if task.State != api.TaskSucceeded {
		t.Errorf("state %s", task.State)
	}
}

func TestBadReportChangesNothing(t *testing.T) {
	task := newTask(0)
	Assign(&task, "c0ffee", "n1", t0)
	before := fmt.Sprintf("%+v", task)
	err := Apply(&task, api.TaskReport{ID: task.ID, Attempt: 1, State: "exploded", ContainerID: "x", ExitCode: code(1)}, t0.Add(time.Second))
	if err == nil || errors.Is(err, ErrStale) {
		t.Fatalf("bad state: %v, want an error", err)
	}
	if after := fmt.Sprintf("%+v", task); after != before {
		t.Errorf("a rejected report changed the task:\n%s\n%s", before, after)
	}
}

func TestCancel(t *testing.T) {
	queued := newTask(0)
	if !Cancel(&queued, t0) || queued.State != api.TaskCancelled || queued.Ended.IsZero() || !queued.CancelRequested {
		t.Errorf("queued task after cancel: %+v", queued)
	}
	if Cancel(&queued, t0) {
		t.Error("cancel of a cancelled task accepted")
	}
	running := newTask(0)
	Assign(&running, "c0ffee", "n1", t0)
	if !Cancel(&running, t0) || running.State != api.TaskRunning || !running.CancelRequested {
		t.Errorf("running task after cancel: %+v", running)
	}
	// It ended on its own meanwhile: success stands.
	if err := Apply(&running, api.TaskReport{ID: running.ID, Attempt: 1, State: api.TaskSucceeded, ExitCode: code(0)}, t0); err != nil {
		t.Fatal(err)
	}
	if running.State != api.TaskSucceeded {
		t.Errorf("state %s, want succeeded", running.State)
	}
	if Cancel(&running, t0) {
		t.Error("cancel of a succeeded task accepted")
	}
	cancelledQueued := newTask(0)
	cancelledQueued.CancelRequested = true
	if Ready(&cancelledQueued, t0) {
		t.Error("a task with a cancel requested is ready")
	}
}

func TestBackoff(t *testing.T) {
	want := map[int]time.Duration{0: time.Second, 1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second,
		4: 8 * time.Second, 6: 32 * time.Second, 7: time.Minute, 8: time.Minute, 1000: time.Minute}
	for n, d := range want {
		if got := Backoff(n); got != d {
			t.Errorf("Backoff(%d) = %s, want %s", n, got, d)
		}
	}
}

func task(id, queue string, prio int, age time.Duration) api.Task {
	spec := api.TaskSpec{Image: "berth/busybox:1", Queue: queue, Priority: &prio}
	spec.Default()
	return New(id, spec, t0.Add(-age))
}

func ids(ts []api.Task) string {
	s := make([]string, len(ts))
	for i := range ts {
		s[i] = ts[i].ID
	}
	return strings.Join(s, " ")
}

func TestOrder(t *testing.T) {
	cases := []struct {
		name    string
		ready   []api.Task
		running map[string]int
		limits  map[string]int
		want    string
	}{
		{"priority, then age", []api.Task{
			task("new-low", "q", 0, 1*time.Minute),
			task("new-high", "q", 2, 1*time.Minute),
			task("old-mid", "q", 1, 3*time.Minute),
			task("old-high", "q", 2, 2*time.Minute),
			task("new-mid", "q", 1, 1*time.Minute),
		}, nil, nil, "old-high new-high old-mid new-mid new-low"},
		{"same age: by id", []api.Task{task("b", "q", 1, 0), task("a", "q", 1, 0)}, nil, nil, "a b"},
		{"queues take turns", []api.Task{
			task("a1", "a", 1, 5*time.Minute), task("a2", "a", 1, 4*time.Minute), task("a3", "a", 1, 3*time.Minute),
			task("b1", "b", 1, 1*time.Minute), task("c1", "c", 0, 0),
		}, nil, nil, "a1 b1 c1 a2 a3"},
		{"limit minus running", []api.Task{
			task("a1", "a", 1, 5*time.Minute), task("a2", "a", 1, 4*time.Minute), task("a3", "a", 1, 3*time.Minute),
			task("b1", "b", 1, 2*time.Minute), task("b2", "b", 1, 1*time.Minute),
		}, map[string]int{"a": 1, "b": 5}, map[string]int{"a": 2, "b": 5}, "a1"},
		{"no limit: all", []api.Task{task("a1", "a", 1, 1), task("a2", "a", 1, 0)}, map[string]int{"a": 50}, map[string]int{"a": 0}, "a1 a2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := ids(Order(c.ready, c.running, c.limits)); got != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

// A burst of 100 on one queue does not keep a later task of another queue
// waiting behind all of it.
func TestOrderBurstDoesNotStarve(t *testing.T) {
	var ready []api.Task
	for i := range 100 {
		ready = append(ready, task(fmt.Sprintf("burst%03d", i), "burst", 2, time.Hour-time.Duration(i)*time.Second))
	}
	ready = append(ready, task("other", "other", 0, 0))
	got := Order(ready, nil, nil)
	if len(got) != 101 {
		t.Fatalf("%d tasks, want 101", len(got))
	}
	for i, task := range got {
		if task.ID == "other" {
			if i > 1 {
				t.Errorf("the other queue's task is at position %d", i)
			}
			return
		}
	}
	t.Fatal("the other queue's task is missing")
}
