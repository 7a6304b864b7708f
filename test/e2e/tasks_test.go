package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestTaskExitCode runs tasks through `berth run`: --wait streams the
// output and exits with the task's code; without it, the id is printed.
func TestTaskExitCode(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)

	r := b.cli(t, "run", "--wait", imageBusybox, "--", "sh", "-c", "echo hi; exit 3")
	if r.code != 3 || r.stdout != "hi\n" {
		t.Errorf("berth run --wait of 'echo hi; exit 3': want exit 3 and stdout \"hi\\n\":\n%s", r)
	}
	if !strings.Contains(r.stderr, "failed after 1 attempt") || !strings.Contains(r.stderr, "exited with code 3") {
		t.Errorf("berth run --wait: want a summary 'failed after 1 attempt: exited with code 3' on stderr:\n%s", r)
	}
	ts := b.listTasks(t, "")
	if len(ts) != 1 {
		t.Fatalf("want 1 task: %s", describeTasks(ts))
	}
	failed := ts[0]
	if failed.State != "failed" || failed.ExitCode == nil || *failed.ExitCode != 3 || len(failed.Attempts) != 1 ||
		failed.Attempts[0].ExitCode == nil || *failed.Attempts[0].ExitCode != 3 || failed.Attempts[0].State != "failed" || failed.Attempts[0].Platform {
		t.Errorf("want a failed task, exit code 3, one failed attempt with exit code 3: %s", failed)
	}
	if !strings.Contains(r.stderr, failed.ID) {
		t.Errorf("berth run --wait does not name the task %s on stderr:\n%s", failed.ID, r)
	}

	r = b.mustCLI(t, "run", "--wait", imageBusybox, "--", "sh", "-c", "echo ok")
	if r.stdout != "ok\n" {
		t.Errorf("berth run --wait of 'echo ok': stdout %q, want only the task's output \"ok\\n\"", r.stdout)
	}

	r = b.mustCLI(t, "run", imageBusybox, "--", "true")
	id := strings.TrimSpace(r.stdout)
	if !taskIDPattern.MatchString(id) {
		t.Fatalf("berth run without --wait: want the task id alone on stdout:\n%s", r)
	}
	tk := b.waitTerminal(t, id, 60*time.Second)
	if tk.State != "succeeded" || tk.ExitCode == nil || *tk.ExitCode != 0 || len(tk.Attempts) != 1 {
		t.Errorf("task %s: want succeeded with exit code 0 after one attempt: %s", id, tk)
	}
	a := tk.Attempts[0]
	if a.Node != b.node || a.Container == "" || a.Started.IsZero() || a.Ended.Before(a.Started) || tk.Ended.IsZero() {
		t.Errorf("attempt of %s: want node %s, a container name, start and end times: %+v", id, b.node, a)
	}

	// berth tasks: newest first, with state and exit code.
	rows := table(t, b.mustCLI(t, "tasks"), "ID")
	if len(rows) != 3 || rows[0][0] != id || rows[2][0] != failed.ID {
		t.Fatalf("berth tasks: want 3 rows, newest (%s) first and %s last: %q", id, failed.ID, rows)
	}
	if rows[0][1] != "default" || rows[0][2] != "succeeded" || rows[0][3] != "1" || rows[0][4] != "0" ||
		rows[2][2] != "failed" || rows[2][4] != "3" {
		t.Errorf("berth tasks: want QUEUE default, STATE, ATTEMPTS 1 and EXIT: %q", rows)
	}
	rows = table(t, b.mustCLI(t, "tasks", "--state", "failed"), "ID")
	if len(rows) != 1 || rows[0][0] != failed.ID {
		t.Errorf("berth tasks --state failed: want only %s: %q", failed.ID, rows)
	}
	show := b.mustCLI(t, "task", "show", failed.ID)
	for _, want := range []string{failed.ID, "failed", "exited with code 3", failed.Attempts[0].Container, b.node} {
		if !strings.Contains(show.stdout, want) {
			t.Errorf("berth task show %s does not show %q:\n%s", failed.ID, want, show.stdout)
		}
	}
}

// TestTaskRetries: a failing task is retried --retries times with a
// growing backoff, every attempt recorded; one that fails once then
// succeeds ends succeeded; a missing image fails at once.
func TestTaskRetries(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)

	r := b.cli(t, "run", "--wait", "--retries", "2", imageBusybox, "--", "sh", "-c", `echo "try $BERTH_ATTEMPT"; exit 5`)
	if r.code != 5 || r.stdout != "try 1\ntry 2\ntry 3\n" {
		t.Errorf("berth run --wait --retries 2 of a task that exits 5: want exit 5 and the output of 3 attempts:\n%s", r)
	}
	for _, want := range []string{"--- attempt 2", "--- attempt 3", "failed after 3 attempts"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("berth run --wait: stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	ts := b.listTasks(t, "")
	if len(ts) != 1 {
		t.Fatalf("want 1 task: %s", describeTasks(ts))
	}
	tk := ts[0]
	if tk.State != "failed" || len(tk.Attempts) != 3 || tk.UserFailures != 3 || tk.PlatformFailures != 0 {
		t.Fatalf("want failed after 3 attempts, all failures the task's own: %s", tk)
	}
	for i, a := range tk.Attempts {
		if a.N != i+1 || a.State != "failed" || a.ExitCode == nil || *a.ExitCode != 5 || a.Platform || a.Ended.IsZero() {
			t.Errorf("attempt %d: want failed with exit code 5, not the platform's: %+v", i+1, a)
		}
	}
	// Backoff: 1s after the first failure, 2s after the second.
	for i, least := range []time.Duration{time.Second, 2 * time.Second} {
		prev, next := tk.Attempts[i], tk.Attempts[i+1]
		if gap := next.Created.Sub(prev.Ended); gap < least-100*time.Millisecond {
			t.Errorf("attempt %d began %s after attempt %d ended; want a backoff of at least %s", next.N, gap, prev.N, least)
		}
	}
	for n, want := range map[int]string{1: "try 1\n", 3: "try 3\n"} {
		if got := b.taskLogs(t, tk.ID, n); got != want {
			t.Errorf("logs of attempt %d: %q, want %q", n, got, want)
		}
	}
	show := b.mustCLI(t, "task", "show", tk.ID).stdout
	if _, attempts, ok := strings.Cut(show, "\nATTEMPT"); !ok || strings.Count(attempts, " failed ") != 3 || strings.Count(attempts, " task ") != 3 {
		t.Errorf("berth task show: want a table of 3 failed attempts, each the task's fault:\n%s", show)
	}

	// Fails once, then succeeds.
	r = b.cli(t, "run", "--wait", "--retries", "3", imageBusybox, "--", "sh", "-c", `[ "$BERTH_ATTEMPT" -ge 2 ] || exit 7; echo ok`)
	if r.code != 0 || r.stdout != "ok\n" {
		t.Errorf("a task that fails once with --retries 3: want exit 0 and \"ok\":\n%s", r)
	}
	ts = b.listTasks(t, "")
	if len(ts) != 2 {
		t.Fatalf("want 2 tasks: %s", describeTasks(ts))
	}
	tk = ts[0]
	if tk.State != "succeeded" || len(tk.Attempts) != 2 || tk.Attempts[0].State != "failed" || tk.Attempts[0].ExitCode == nil ||
		*tk.Attempts[0].ExitCode != 7 || tk.Attempts[1].State != "succeeded" || tk.UserFailures != 1 {
		t.Errorf("want succeeded on attempt 2 after attempt 1 failed with exit code 7: %s", tk)
	}

	// A missing image is the task's fault, not the platform's: it fails at
	// once, whatever --retries says, with a message naming the image.
	r = b.cli(t, "run", "--wait", "--retries", "3", "berth/nope:1", "--", "true")
	if r.code != 1 || !strings.Contains(r.stderr, "berth/nope:1") {
		t.Errorf("berth run --wait of a missing image: want exit 1 and a message naming berth/nope:1:\n%s", r)
	}
	ts = b.listTasks(t, "")
	if len(ts) != 3 {
		t.Fatalf("want 3 tasks: %s", describeTasks(ts))
	}
	tk = ts[0]
	if tk.State != "failed" || len(tk.Attempts) != 1 || tk.PlatformFailures != 0 || !strings.Contains(tk.Error, "berth/nope:1") {
		t.Errorf("a missing image: want failed after one attempt, with an error naming the image: %s", tk)
	}
}

// TestTaskTimeout: a task that ignores SIGTERM runs past --timeout; it is
// killed after the grace period, ends timed_out, and its container is gone.
func TestTaskTimeout(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)
	r := b.cli(t, "run", "--wait", "--timeout", "2s", "--stop-grace", "1s", imageBusybox, "--",
		"sh", "-c", "trap '' TERM; echo started; sleep 60; echo not-reached")
	if r.code != 124 || r.stdout != "started\n" {
		t.Errorf("berth run --wait --timeout 2s of a task that sleeps 60s: want exit 124 and stdout \"started\":\n%s", r)
	}
	if !strings.Contains(r.stderr, "timed out after 1 attempt") {
		t.Errorf("berth run --wait: want a summary 'timed out after 1 attempt' on stderr:\n%s", r)
	}
	ts := b.listTasks(t, "")
	if len(ts) != 1 {
		t.Fatalf("want 1 task: %s", describeTasks(ts))
	}
	tk := ts[0]
	if tk.State != "timed_out" || len(tk.Attempts) != 1 || tk.Attempts[0].State != "timed_out" {
		t.Fatalf("want timed_out after one timed-out attempt: %s", tk)
	}
	a := tk.Attempts[0]
	ran := a.Ended.Sub(a.Started)
	t.Logf("the attempt ran %s (timeout 2s, stop grace 1s)", ran)
	if ran < 2*time.Second || ran > 30*time.Second {
		t.Errorf("the attempt ran %s; want the 2s timeout, then the 1s grace, then SIGKILL", ran)
	}
	b.waitNoTaskContainer(t, tk)
}

// TestTaskCancel cancels a running task (its `run --wait` exits 130) and a
// queued one (it never runs).
func TestTaskCancel(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)
	b.mustCLI(t, "queue", "set", "one", "--concurrency", "1")
	waiter := b.startCLI(t, "run", "--wait", "--queue", "one", "--stop-grace", "5s", imageBusybox, "--", "sh", "-c", "echo before; sleep 300")
	var running task
	waitFor(t, 60*time.Second, func() (bool, string) {
		ts := b.listTasks(t, "")
		if len(ts) != 1 {
			return false, describeTasks(ts)
		}
		running = ts[0]
		return running.State == "running" && len(running.Attempts) == 1 && running.Attempts[0].State == "running", running.String()
	})
	if cs := containersOfTask(t, b.cluster, running.ID); len(cs) != 1 || cs[0].State != "running" {
		t.Errorf("want one running container for the running task %s: %+v", running.ID, cs)
	}

	// A second task waits in the queue behind it and is cancelled there.
	queued := b.submit(t, map[string]any{"image": imageBusybox, "command": []string{"true"}, "queue": "one"})
	time.Sleep(time.Second)
	if tk := b.getTask(t, queued.ID); tk.State != "queued" {
		t.Fatalf("with concurrency 1 and a task running, a second one is %s, want queued: %s", tk.State, tk)
	}
	r := b.mustCLI(t, "task", "cancel", queued.ID)
	if !strings.Contains(r.stdout, "cancelled") {
		t.Errorf("berth task cancel of a queued task: want 'cancelled':\n%s", r)
	}
	if tk := b.getTask(t, queued.ID); tk.State != "cancelled" || len(tk.Attempts) != 0 {
		t.Errorf("a cancelled queued task: want cancelled at once with no attempt: %s", tk)
	}

	start := time.Now()
	b.mustCLI(t, "task", "cancel", running.ID)
	tk := b.waitTerminal(t, running.ID, 30*time.Second)
	t.Logf("the running task ended %s after the cancel: %s", time.Since(start).Round(time.Millisecond), tk)
	if tk.State != "cancelled" || len(tk.Attempts) != 1 || tk.Attempts[0].State != "cancelled" {
		t.Errorf("want cancelled, its attempt cancelled: %s", tk)
	}
	res := waiter.wait(t, 30*time.Second)
	if res.code != 130 || res.stdout != "before\n" || !strings.Contains(res.stderr, "cancelled") {
		t.Errorf("berth run --wait of a task cancelled meanwhile: want exit 130, its output and 'cancelled' on stderr:\n%s", res)
	}
	b.waitNoTaskContainer(t, tk)

	r = b.cli(t, "task", "cancel", running.ID)
	if r.code == 0 || !strings.Contains(r.stderr, "ended") {
		t.Errorf("berth task cancel of an ended task: want a non-zero exit saying it has ended:\n%s", r)
	}
	if tk := b.getTask(t, queued.ID); tk.State != "cancelled" || len(tk.Attempts) != 0 {
		t.Errorf("the cancelled queued task ran after all: %s", tk)
	}
}

// TestTaskPayloadAndEnv: the payload is mounted read-only at the path in
// BERTH_PAYLOAD; BERTH_TASK_ID, BERTH_ATTEMPT and --env are set; an
// idempotency key returns the first task.
func TestTaskPayloadAndEnv(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)
	payload := `{"job": "convert", "n": 42}` + "\n"
	file := filepath.Join(t.TempDir(), "job.json")
	if err := os.WriteFile(file, []byte(payload), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `cat "$BERTH_PAYLOAD"
echo "id=$BERTH_TASK_ID attempt=$BERTH_ATTEMPT path=$BERTH_PAYLOAD greeting=$GREETING"
if (echo x >> "$BERTH_PAYLOAD") 2>/dev/null; then echo writable; else echo read-only; fi`
	r := b.mustCLI(t, "run", "--wait", "--payload", "@"+file, "--env", "GREETING=hello world", imageBusybox, "--", "sh", "-c", script)
	ts := b.listTasks(t, "")
	if len(ts) != 1 {
		t.Fatalf("want 1 task: %s", describeTasks(ts))
	}
	tk := ts[0]
	want := payload + fmt.Sprintf("id=%s attempt=1 path=/task/payload greeting=hello world\nread-only\n", tk.ID)
	if r.stdout != want {
		t.Errorf("the task's output:\n%q\nwant:\n%q", r.stdout, want)
	}
	if tk.PayloadSize != len(payload) {
		t.Errorf("payload_size %d, want %d", tk.PayloadSize, len(payload))
	}
	if code, data := b.request(t, "GET", "/v1/tasks/"+tk.ID+"/payload", nil, ""); code != 200 || string(data) != payload {
		t.Errorf("GET /v1/tasks/%s/payload: %d %q, want 200 %q", tk.ID, code, data, payload)
	}

	// A literal payload.
	r = b.mustCLI(t, "run", "--wait", "--payload", "plain text", imageBusybox, "--", "sh", "-c", `cat "$BERTH_PAYLOAD"`)
	if r.stdout != "plain text" {
		t.Errorf("a literal payload: the task printed %q, want \"plain text\"", r.stdout)
	}

	// The same idempotency key twice: one task.
	before := len(b.listTasks(t, ""))
	first := b.mustCLI(t, "run", "--idempotency-key", "import-2026-11-28", imageBusybox, "--", "true")
	second := b.mustCLI(t, "run", "--idempotency-key", "import-2026-11-28", imageBusybox, "--", "echo", "other")
	if strings.TrimSpace(first.stdout) == "" || first.stdout != second.stdout {
		t.Errorf("two runs with one idempotency key: want the same task id twice, got %q and %q", first.stdout, second.stdout)
	}
	if n := len(b.listTasks(t, "")); n != before+1 {
		t.Errorf("two runs with one idempotency key stored %d tasks, want 1", n-before)
	}
}

// TestTaskLogsOutliveContainer: once a task has ended its container is
// gone from the engine, and its output is still there, also after berth
// restarts; output over 1 MiB is cut and says so.
func TestTaskLogsOutliveContainer(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)
	var want strings.Builder
	for i := 1; i <= 300; i++ {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	r := b.mustCLI(t, "run", "--wait", imageBusybox, "--", "sh", "-c",
		`i=1; while [ $i -le 300 ]; do echo "line $i"; i=$((i+1)); done; echo to-stderr >&2`)
	// stdout and stderr come through separate pipes: the line on stderr
	// may land anywhere among the last lines of stdout.
	complete := func(out string) bool {
		return strings.Contains(out, "to-stderr\n") && strings.Replace(out, "to-stderr\n", "", 1) == want.String()
	}
	if !complete(r.stdout) {
		t.Errorf("berth run --wait: want the 300 lines and the task's stderr, got %d bytes: %.200s ... %s", len(r.stdout), r.stdout, r.stdout[max(0, len(r.stdout)-100):])
	}
	ts := b.listTasks(t, "")
	if len(ts) != 1 {
		t.Fatalf("want 1 task: %s", describeTasks(ts))
	}
	tk := b.waitTerminal(t, ts[0].ID, 30*time.Second)
	b.waitNoTaskContainer(t, tk)
	if tk.Attempts[0].LogTruncated || tk.Attempts[0].LogBytes < int64(want.Len()) {
		t.Errorf("attempt 1: log_bytes %d, truncated %v; want at least %d bytes, not cut", tk.Attempts[0].LogBytes, tk.Attempts[0].LogTruncated, want.Len())
	}

	check := func(when string) {
		t.Helper()
		for _, args := range [][]string{{"task", "logs", tk.ID}, {"task", "logs", tk.ID, "--attempt", "1"}} {
			r := b.mustCLI(t, args...)
			if !complete(r.stdout) {
				t.Errorf("%s: berth %s: want the 300 lines and the task's stderr, got %d bytes: %.200s", when, strings.Join(args, " "), len(r.stdout), r.stdout)
			}
		}
		if got := b.taskLogs(t, tk.ID, 1); !complete(got) {
			t.Errorf("%s: GET /v1/tasks/%s/logs?attempt=1: %d bytes, want the 300 lines", when, tk.ID, len(got))
		}
	}
	check("with the container gone")

	// Output over 1 MiB: at most 1 MiB is kept, and the attempt says so.
	r = b.mustCLI(t, "run", imageBusybox, "--", "sh", "-c", "yes 0123456789abcdef | head -c 3000000; echo; echo the-end")
	big := b.waitTerminal(t, strings.TrimSpace(r.stdout), 60*time.Second)
	if big.State != "succeeded" || !big.Attempts[0].LogTruncated {
		t.Errorf("a task that printed 3 MB: want succeeded and its log marked cut: %s %+v", big, big.Attempts[0])
	}
	if got := b.taskLogs(t, big.ID, 0); len(got) > 1<<20+4096 || len(got) < 1<<19 {
		t.Errorf("the log of a task that printed 3 MB is %d bytes; want about 1 MiB", len(got))
	}
	if show := b.mustCLI(t, "task", "show", big.ID); !strings.Contains(show.stdout, "cut") {
		t.Errorf("berth task show of a cut log does not say so:\n%s", show.stdout)
	}

	// Logs live with the server's data.
	b.restart(t)
	check("after a restart of berth")
}

// TestTaskQueueConcurrency submits a burst of 20 tasks to a queue limited
// to 3: never more than 3 run at once (sampled from the API while they
// run, and from the attempts' time ranges after); a task on another queue
// does not wait for the burst.
func TestTaskQueueConcurrency(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)
	const limit = 3
	r := b.mustCLI(t, "queue", "set", "burst", "--concurrency", fmt.Sprint(limit))
	if !strings.Contains(r.stdout, "at most 3") {
		t.Errorf("berth queue set: want 'at most 3':\n%s", r)
	}
	specs := make([]map[string]any, 20)
	for i := range specs {
		specs[i] = map[string]any{"image": imageBusybox, "command": []string{"sleep", "1"}, "queue": "burst"}
	}
	burst := b.submitBatch(t, specs)
	other := b.submit(t, map[string]any{"image": imageBusybox, "command": []string{"true"}, "queue": "other"})

	maxRunning, maxQueueRunning, samples := 0, 0, 0
	over := "" // the first sample over the limit
	var lsRows [][]string
	deadline := time.Now().Add(3 * time.Minute)
	for {
		ts, err := b.listTasksErr("queue=burst")
		if err != nil {
			t.Fatal(err)
		}
		running, done := 0, 0
		for _, tk := range ts {
			switch {
			case tk.State == "running":
				running++
			case terminal(tk.State):
				done++
			}
		}
		maxRunning = max(maxRunning, running)
		var qs list[queueStatus]
		b.getJSON(t, "/v1/queues", &qs)
		for _, q := range qs.Items {
			if q.Name == "burst" {
				maxQueueRunning = max(maxQueueRunning, q.Running)
				if q.Concurrency != limit {
					t.Errorf("GET /v1/queues: burst has concurrency %d, want %d", q.Concurrency, limit)
				}
			}
		}
		samples++
		if running > limit && over == "" {
			over = fmt.Sprintf("%d tasks of queue burst running at once (limit %d): %s", running, limit, describeTasks(ts))
		}
		if lsRows == nil && running > 0 && done < 15 {
			lsRows = table(t, b.mustCLI(t, "queue", "ls"), "NAME")
		}
		if done == len(burst) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the burst did not end within 3 minutes: %s", describeTasks(ts))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d samples: at most %d running (tasks), %d (queue counts)", samples, maxRunning, maxQueueRunning)
	if over != "" {
		t.Errorf("first sample over the limit: %s", over)
	}
	if maxRunning != limit || maxQueueRunning > limit {
		t.Errorf("queue burst (limit %d, 20 queued): at most %d ran at once (queue count %d); want the limit used and never passed", limit, maxRunning, maxQueueRunning)
	}
	found := false
	for _, row := range lsRows {
		if row[0] == "burst" {
			found = true
			if row[1] != "3" {
				t.Errorf("berth queue ls: burst CONCURRENCY %q, want 3: %q", row[1], row)
			}
		}
	}
	if !found {
		t.Errorf("berth queue ls during the burst does not list burst: %q", lsRows)
	}

	ts := b.listTasks(t, "queue=burst")
	for _, tk := range ts {
		if tk.State != "succeeded" || len(tk.Attempts) != 1 {
			t.Errorf("want every task of the burst succeeded after one attempt: %s", tk)
		}
	}
	if n, who := maxOverlap(attemptSpans(ts)); n > limit {
		t.Errorf("%d attempts of queue burst overlapped in time (limit %d): %v", n, limit, who)
	}

	// The other queue did not wait for the burst to drain.
	o := b.waitTerminal(t, other.ID, 60*time.Second)
	var lastStart time.Time
	for _, tk := range ts {
		if c := tk.Attempts[0].Created; c.After(lastStart) {
			lastStart = c
		}
	}
	if o.State != "succeeded" || len(o.Attempts) == 0 || !o.Attempts[0].Created.Before(lastStart) {
		t.Errorf("the task on queue other started after the whole burst had started (last at %s): %s", lastStart.Format(time.StampMilli), o)
	}
}

// TestTaskPriorities: with concurrency 1, a later task of priority 2 starts
// before earlier ones of priority 0, and equal priorities go oldest first.
func TestTaskPriorities(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)
	b.mustCLI(t, "queue", "set", "prio", "--concurrency", "1")
	blocker := b.submit(t, map[string]any{"image": imageBusybox, "command": []string{"sleep", "4"}, "queue": "prio"})
	b.waitRunning(t, blocker.ID, 60*time.Second)

	order := []struct {
		name     string
		priority int
	}{{"low-1", 0}, {"low-2", 0}, {"low-3", 0}, {"high", 2}, {"mid", 1}}
	ids := map[string]string{}
	for _, o := range order {
		tk := b.submit(t, map[string]any{"image": imageBusybox, "command": []string{"echo", o.name}, "queue": "prio", "priority": o.priority})
		ids[tk.ID] = o.name
		time.Sleep(20 * time.Millisecond) // distinct creation times
	}
	if tk := b.getTask(t, blocker.ID); tk.State != "running" {
		t.Fatalf("the blocker ended before all 5 were queued, the test proves nothing: %s", tk)
	}
	var ended []task
	for id := range ids {
		ended = append(ended, b.waitTerminal(t, id, 2*time.Minute))
	}
	for _, tk := range ended {
		if tk.State != "succeeded" || len(tk.Attempts) != 1 || tk.Attempts[0].Started.IsZero() {
			t.Fatalf("want every task succeeded after one attempt: %s", describeTasks(ended))
		}
	}
	sort.Slice(ended, func(i, j int) bool { return ended[i].Attempts[0].Started.Before(ended[j].Attempts[0].Started) })
	var got []string
	for _, tk := range ended {
		got = append(got, fmt.Sprintf("%s@%s", ids[tk.ID], tk.Attempts[0].Started.Format("15:04:05.000")))
	}
	t.Logf("start order: %v", got)
	want := []string{"high", "mid", "low-1", "low-2", "low-3"}
	for i, tk := range ended {
		if ids[tk.ID] != want[i] {
			t.Errorf("start order %v, want %v", got, want)
			break
		}
	}
	if n, who := maxOverlap(attemptSpans(append(ended, b.getTask(t, blocker.ID)))); n > 1 {
		t.Errorf("%d attempts of queue prio (limit 1) overlapped: %v", n, who)
	}
}

// TestTaskSchedule: a schedule with @every 2s queues tasks; with overlap
// skip, a task that sleeps 3s never runs twice at once; after rm, no more.
func TestTaskSchedule(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)
	r := b.mustCLI(t, "schedule", "create", "tick", "--cron", "@every 2s", imageBusybox, "--", "sh", "-c", "echo tick; sleep 3")
	if !strings.Contains(r.stdout, "tick: created") {
		t.Errorf("berth schedule create: want 'tick: created':\n%s", r)
	}
	var ts []task
	waitFor(t, 60*time.Second, func() (bool, string) {
		ts = b.listTasks(t, "schedule=tick")
		done := 0
		for _, tk := range ts {
			if terminal(tk.State) {
				done++
			}
		}
		return done >= 2, describeTasks(ts)
	})

	// The schedule fires every 2s: ls and the record read after it agree
	// unless it fired in between, so they are read again then.
	var rows cliResult
	var s schedule
	waitFor(t, 20*time.Second, func() (bool, string) {
		rows = b.mustCLI(t, "schedule", "ls")
		b.getJSON(t, "/v1/schedules/tick", &s)
		return strings.Contains(rows.stdout, s.LastTask), fmt.Sprintf("ls:\n%s\nrecord: %+v", rows.stdout, s)
	})
	if !strings.HasPrefix(rows.stdout, "NAME") || !strings.Contains(rows.stdout, "tick") || !strings.Contains(rows.stdout, "@every 2s") ||
		!strings.Contains(rows.stdout, "skip") || !strings.Contains(rows.stdout, imageBusybox) {
		t.Errorf("berth schedule ls: want tick, @every 2s, skip and the image:\n%s", rows.stdout)
	}
	if s.LastRun.IsZero() || !taskIDPattern.MatchString(s.LastTask) {
		t.Errorf("schedule tick: want a last run and a last task shown by ls: %+v", s)
	}

	rm := b.mustCLI(t, "schedule", "rm", "tick")
	removed := time.Now()
	if !strings.Contains(rm.stdout, "removed") {
		t.Errorf("berth schedule rm: want 'removed':\n%s", rm)
	}
	time.Sleep(5 * time.Second)
	ts = b.listTasks(t, "schedule=tick")
	sort.Slice(ts, func(i, j int) bool { return ts[i].Created.Before(ts[j].Created) })
	t.Logf("tasks of tick: %s", describeTasks(ts))
	for _, tk := range ts {
		if tk.Created.After(removed.Add(time.Second)) {
			t.Errorf("task %s was made %s after the schedule was removed", tk.ID, tk.Created.Sub(removed))
		}
		if tk.Schedule != "tick" {
			t.Errorf("task %s: schedule %q, want tick", tk.ID, tk.Schedule)
		}
	}
	// Overlap skip: each run began after the one before had ended.
	for i := 1; i < len(ts); i++ {
		prev, next := ts[i-1], ts[i]
		if prev.Ended.IsZero() || next.Created.Before(prev.Ended) {
			t.Errorf("overlap skip: task %s (made %s) began while %s (ended %s) was active",
				next.ID, next.Created.Format(time.StampMilli), prev.ID, prev.Ended.Format(time.StampMilli))
		}
	}
	for _, tk := range ts {
		if terminal(tk.State) {
			if tk.State != "succeeded" {
				t.Errorf("a scheduled run did not succeed: %s", tk)
			} else if got := b.taskLogs(t, tk.ID, 0); got != "tick\n" {
				t.Errorf("logs of scheduled task %s: %q, want \"tick\\n\"", tk.ID, got)
			}
		}
	}
	var all list[schedule]
	b.getJSON(t, "/v1/schedules", &all)
	if len(all.Items) != 0 {
		t.Errorf("schedules left after rm: %+v", all.Items)
	}
}

// TestTaskKill9 kills berth with SIGKILL while 20 tasks run and wait
// (concurrency 4), at two moments, and starts it again on the same data
// dir: every task ends in one terminal state, and no task ever has two
// attempts (or two live containers) at the same time.
func TestTaskKill9(t *testing.T) {
	t.Parallel()
	moments := []struct {
		name string
		when func(assigned, running, done int) bool // attempts assigned, containers running, tasks ended
	}{
		// The first attempts are assigned; their containers are being made.
		{"while-starting", func(assigned, running, done int) bool { return assigned >= 1 && running == 0 && done == 0 }},
		{"while-running", func(assigned, running, done int) bool { return running >= 3 && done < 12 }},
	}
	for _, m := range moments {
		t.Run(m.name, func(t *testing.T) { kill9DuringTasks(t, m.when) })
	}
}

func kill9DuringTasks(t *testing.T, when func(assigned, running, done int) bool) {
	b := startTaskBerth(t)
	b.mustCLI(t, "queue", "set", "crash", "--concurrency", "4")
	specs := make([]map[string]any, 20)
	for i := range specs {
		specs[i] = map[string]any{"image": imageBusybox, "command": []string{"sleep", "2"}, "queue": "crash"}
	}
	submitted := b.submitBatch(t, specs)
	ids := map[string]bool{}
	for _, tk := range submitted {
		ids[tk.ID] = true
	}

	// Watch the engine all along: never two live containers for one task.
	var mu sync.Mutex
	var violations, overlaps []string
	maxLive := 0
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			cs, err := taskContainersErr(b.cluster)
			if err != nil {
				continue
			}
			per := map[string][]taskContainer{}
			live := 0
			for _, c := range cs {
				per[c.Task] = append(per[c.Task], c)
				if c.State == "running" || c.State == "created" || c.State == "restarting" {
					live++
				}
			}
			mu.Lock()
			maxLive = max(maxLive, live)
			for id, list := range per {
				n := 0
				for _, c := range list {
					if c.State != "exited" && c.State != "dead" {
						n++
					}
				}
				if n > 1 {
					violations = append(violations, fmt.Sprintf("%s: %+v", id, list))
				} else if len(list) > 1 {
					overlaps = append(overlaps, fmt.Sprintf("%s: %+v", id, list))
				}
			}
			mu.Unlock()
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-sampled
	}()

	// Kill at the moment, polled often so as not to miss it.
	killed := false
	var seen []task
	for deadline := time.Now().Add(60 * time.Second); !killed && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ts, err := b.listTasksErr("queue=crash")
		if err != nil {
			t.Fatal(err)
		}
		assigned, running, done := 0, 0, 0
		for _, tk := range ts {
			if tk.State == "running" {
				assigned++
				if tk.Attempts[len(tk.Attempts)-1].State == "running" {
					running++
				}
			}
			if terminal(tk.State) {
				done++
			}
		}
		seen = ts
		if when(assigned, running, done) {
			b.kill9(t)
			killed = true
		}
	}
	if !killed {
		t.Fatalf("missed the moment to kill berth: %s", describeTasks(seen))
	}
	t.Logf("killed at: %s", describeTasks(seen))
	cs, _ := taskContainersErr(b.cluster)
	t.Logf("while berth is down: %d task containers: %+v", len(cs), cs)
	time.Sleep(3 * time.Second) // some containers end while berth is down
	b.relaunch(t)

	var ts []task
	waitFor(t, 3*time.Minute, func() (bool, string) {
		var err error
		if ts, err = b.listTasksErr("queue=crash"); err != nil {
			return false, err.Error()
		}
		done := 0
		for _, tk := range ts {
			if terminal(tk.State) {
				done++
			}
		}
		return done == len(ids) && len(ts) == len(ids), describeTasks(ts)
	})
	t.Logf("all ended: %s", describeTasks(ts))
	for _, tk := range ts {
		if !ids[tk.ID] {
			t.Errorf("a task nobody submitted: %s", tk)
		}
		if tk.State != "succeeded" {
			t.Errorf("task %s ended %s; a platform failure (berth killed) must be retried: %s", tk.ID, tk.State, tk)
		}
		// Attempts follow one another: each begins after the last ended.
		for i := 1; i < len(tk.Attempts); i++ {
			prev, next := tk.Attempts[i-1], tk.Attempts[i]
			if prev.Ended.IsZero() || next.Created.Before(prev.Ended) || (!next.Started.IsZero() && next.Started.Before(prev.Ended)) {
				t.Errorf("task %s: attempt %d (created %s, started %s) overlaps attempt %d (ended %s)", tk.ID, next.N,
					next.Created.Format(time.StampMilli), next.Started.Format(time.StampMilli), prev.N, prev.Ended.Format(time.StampMilli))
			}
		}
		for _, a := range tk.Attempts[:max(0, len(tk.Attempts)-1)] {
			if a.State != "lost" || !a.Platform {
				t.Errorf("task %s: attempt %d was retried after %s; only attempts lost to the platform should be: %s", tk.ID, a.N, a.State, tk)
			}
		}
	}

	// The end is final.
	time.Sleep(3 * time.Second)
	for _, tk := range ts {
		again := b.getTask(t, tk.ID)
		if again.State != tk.State || len(again.Attempts) != len(tk.Attempts) || !again.Ended.Equal(tk.Ended) {
			t.Errorf("task %s changed after it ended: %s, then %s", tk.ID, tk, again)
		}
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		cs, err := taskContainersErr(b.cluster)
		if err != nil {
			return false, err.Error()
		}
		return len(cs) == 0, fmt.Sprintf("task containers left after every task ended: %+v", cs)
	})
	close(stop)
	<-sampled
	mu.Lock()
	defer mu.Unlock()
	t.Logf("at most %d live task containers at once", maxLive)
	if len(overlaps) > 0 {
		t.Logf("tasks seen with an ended container next to another (not two running): %d, first: %s", len(overlaps), overlaps[0])
	}
	for _, v := range violations {
		t.Errorf("two live containers for one task: %s", v)
	}
	if maxLive > 4 {
		t.Errorf("%d task containers of queue crash (limit 4) were live at once", maxLive)
	}
}

// TestTaskBadInput: invalid tasks, schedules and queues are refused with
// 400 naming the field, and nothing is stored.
func TestTaskBadInput(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)
	good := func(over map[string]any) map[string]any {
		s := map[string]any{"image": imageBusybox, "command": []string{"true"}}
		for k, v := range over {
			s[k] = v
		}
		return s
	}
	big := base64.StdEncoding.EncodeToString(make([]byte, 1<<20+1))
	cases := []struct {
		name, method, path string
		body               any
		field              string // the field named, or its last part for a batch
	}{
		{"image-syntax", "POST", "/v1/tasks", good(map[string]any{"image": "Bad Image!!"}), "image"},
		{"image-missing", "POST", "/v1/tasks", map[string]any{"command": []string{"true"}}, "image"},
		{"timeout-negative", "POST", "/v1/tasks", good(map[string]any{"timeout": "-5s"}), "timeout"},
		{"timeout-garbage", "POST", "/v1/tasks", good(map[string]any{"timeout": "soon"}), "timeout"},
		{"retries-negative", "POST", "/v1/tasks", good(map[string]any{"retries": -1}), "retries"},
		{"priority-3", "POST", "/v1/tasks", good(map[string]any{"priority": 3}), "priority"},
		{"queue-not-a-label", "POST", "/v1/tasks", good(map[string]any{"queue": "Bad_Queue"}), "queue"},
		{"env-reserved", "POST", "/v1/tasks", good(map[string]any{"env": map[string]string{"BERTH_TASK_ID": "x"}}), "env.BERTH_TASK_ID"},
		{"payload-over-1MiB", "POST", "/v1/tasks", good(map[string]any{"payload": big}), "payload"},
		{"unknown-field", "POST", "/v1/tasks", good(map[string]any{"colour": "blue"}), "colour"},
		{"batch-one-bad", "POST", "/v1/tasks", []any{good(nil), good(map[string]any{"image": "Bad Image!!"})}, "image"},
		{"cron-garbage", "PUT", "/v1/schedules/bad", map[string]any{"name": "bad", "cron": "not a cron", "task": good(nil)}, "cron"},
		{"cron-6-fields", "PUT", "/v1/schedules/bad", map[string]any{"name": "bad", "cron": "0 0 3 * * *", "task": good(nil)}, "cron"},
		{"cron-every-0s", "PUT", "/v1/schedules/bad", map[string]any{"name": "bad", "cron": "@every 0s", "task": good(nil)}, "cron"},
		{"schedule-overlap", "PUT", "/v1/schedules/bad", map[string]any{"name": "bad", "cron": "@hourly", "overlap": "sometimes", "task": good(nil)}, "overlap"},
		{"schedule-task-image", "PUT", "/v1/schedules/bad", map[string]any{"name": "bad", "cron": "@hourly", "task": good(map[string]any{"image": "Bad Image!!"})}, "task.image"},
		{"queue-negative", "PUT", "/v1/queues/q", map[string]any{"name": "q", "concurrency": -1}, "concurrency"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body, _ := json.Marshal(c.body)
			code, data := b.request(t, c.method, c.path, body, "application/json")
			var e apiError
			if err := json.Unmarshal(data, &e); err != nil {
				t.Fatalf("%s %s: answer %d is not a JSON error: %v: %.300s", c.method, c.path, code, err, data)
			}
			if code != 400 || e.Error == "" || !strings.HasSuffix(e.Field, c.field) {
				t.Errorf("%s %s (%s): got %d %.300s; want 400 naming the field %q", c.method, c.path, c.name, code, strings.TrimSpace(string(data)), c.field)
			} else {
				t.Logf("%d field=%q error=%q", code, e.Field, e.Error)
			}
		})
	}

	// The CLI refuses too; too large a payload before anything is sent.
	bigFile := filepath.Join(t.TempDir(), "big.json")
	if err := os.WriteFile(bigFile, make([]byte, 1<<20+1), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "Bad Image!!", "--", "true"}, "image"},
		{[]string{"run", "--timeout", "-5s", imageBusybox, "--", "true"}, "timeout"},
		{[]string{"run", "--priority", "5", imageBusybox, "--", "true"}, "priority"},
		{[]string{"run", "--payload", "@" + bigFile, imageBusybox, "--", "true"}, "1 MiB"},
		{[]string{"run", "--env", "NOEQUALS", imageBusybox, "--", "true"}, "K=V"},
		{[]string{"schedule", "create", "bad", "--cron", "not a cron", imageBusybox, "--", "true"}, "cron"},
		{[]string{"queue", "set", "q", "--concurrency", "-1"}, "concurrency"},
		{[]string{"task", "show", "nope"}, "not a task id"},
	} {
		r := b.cli(t, c.args...)
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("want a non-zero exit naming %q on stderr:\n%s", c.want, r)
		}
	}

	// Nothing was stored.
	if ts := b.listTasks(t, ""); len(ts) != 0 {
		t.Errorf("tasks stored after only bad inputs: %s", describeTasks(ts))
	}
	var ss list[schedule]
	b.getJSON(t, "/v1/schedules", &ss)
	if len(ss.Items) != 0 {
		t.Errorf("schedules stored after only bad inputs: %+v", ss.Items)
	}
	var qs list[queueStatus]
	b.getJSON(t, "/v1/queues", &qs)
	if len(qs.Items) != 0 {
		t.Errorf("queues stored after only bad inputs: %+v", qs.Items)
	}
	if cs, err := taskContainersErr(b.cluster); err != nil || len(cs) != 0 {
		t.Errorf("task containers after only bad inputs: %+v %v", cs, err)
	}
	if code, data := b.request(t, "GET", "/v1/tasks/0123456789abcdef", nil, ""); code != 404 {
		t.Errorf("GET of a task that does not exist: %d %s, want 404", code, data)
	}
}
