package apiserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"berth/api"
	"berth/internal/client"
	"berth/internal/store"
	"berth/internal/tasklog"
	"berth/internal/tasks"
)

type taskEnv struct {
	url  string
	st   *store.Store
	logs *tasklog.Store
	cl   *client.Client
}

func newTaskServer(t testing.TB) taskEnv {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.OpenEmbedded(context.Background(), t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	logs, err := tasklog.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer((&Server{Store: st, Token: "secret", Log: log, TaskLogs: logs}).Handler())
	t.Cleanup(hs.Close)
	return taskEnv{hs.URL, st, logs, client.New(hs.URL, "secret")}
}

// post sends a JSON body and decodes the answer into out (when 2xx).
func (e taskEnv) send(t *testing.T, method, path, body string, out any) (int, api.Error) {
	t.Helper()
	req, _ := http.NewRequest(method, e.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var apiErr api.Error
	if resp.StatusCode >= 300 {
		_ = json.Unmarshal(b, &apiErr)
	} else if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, path, b, err)
		}
	}
	return resp.StatusCode, apiErr
}

func count[T any](t *testing.T, st *store.Store, kind store.Kind[T]) int {
	t.Helper()
	all, _, err := kind.List(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	return len(all)
}

func specJSON(fields string) string {
	if fields == "" {
		return `{"image":"berth/busybox:1"}`
	}
	return `{"image":"berth/busybox:1",` + fields + `}`
}

// Bad input answers 400 naming the field, and nothing is stored.
func TestSubmitBadInputStoresNothing(t *testing.T) {
	e := newTaskServer(t)
	over := base64.StdEncoding.EncodeToString(make([]byte, api.MaxPayload+1))
	good := specJSON("")
	batch := func(specs ...string) string { return "[" + strings.Join(specs, ",") + "]" }
	many := make([]string, api.MaxTaskBatch+1)
	for i := range many {
		many[i] = good
	}
	cases := []struct {
		name, body, field string
		code              int
	}{
		{"bad image syntax", `{"image":"Not An Image"}`, "image", 400},
		{"no image", `{"command":["true"]}`, "image", 400},
		{"negative timeout", specJSON(`"timeout":"-1s"`), "timeout", 400},
		{"bad priority", specJSON(`"priority":3`), "priority", 400},
		{"negative retries", specJSON(`"retries":-1`), "retries", 400},
		{"payload over 1 MiB", specJSON(`"payload":"` + over + `"`), "payload", 400},
		{"unknown field", specJSON(`"bogus":1`), "bogus", 400},
		{"reserved env", specJSON(`"env":{"BERTH_TASK_ID":"x"}`), "env.BERTH_TASK_ID", 400},
		{"bad idempotency key", specJSON(`"idempotency_key":"has space"`), "idempotency_key", 400},
		{"malformed json", `{"image":`, "", 400},
		{"batch with one bad spec", batch(good, good, good, specJSON(`"timeout":"-5s"`)), "tasks[3].timeout", 400},
		{"batch with an unknown field", batch(good, specJSON(`"nope":true`)), "tasks[1].nope", 400},
		{"batch with a wrong type", batch(good, `{"image":"berth/busybox:1","retries":"x"}`), "tasks[1].retries", 400},
		{"empty batch", "[]", "tasks", 400},
		{"batch too large", batch(many...), "tasks", 400},
		{"body over 8 MiB", specJSON(`"env":{"X":"` + strings.Repeat("a", MaxTaskBodyBytes) + `"}`), "", 413},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, apiErr := e.send(t, "POST", "/v1/tasks", c.body, nil)
			if code != c.code || apiErr.Field != c.field || apiErr.Error == "" {
				t.Errorf("got %d %+v, want %d naming field %q", code, apiErr, c.code, c.field)
			}
		})
	}
	if n := count(t, e.st, store.Tasks) + count(t, e.st, store.Payloads) + count(t, e.st, store.TaskKeys); n != 0 {
		t.Fatalf("%d records stored after bad input", n)
	}
}

func TestSubmitGetAndPayload(t *testing.T) {
	e := newTaskServer(t)
	ctx := context.Background()
	payload := []byte(`{"job": 1}`)
	var task api.Task
	code, apiErr := e.send(t, "POST", "/v1/tasks", specJSON(`"command":["sh","-c","exit 3"],"payload":"`+base64.StdEncoding.EncodeToString(payload)+`"`), &task)
	if code != 201 {
		t.Fatalf("submit: %d %+v", code, apiErr)
	}
	if !api.ValidTaskID(task.ID) || task.State != api.TaskQueued || task.PayloadSize != len(payload) || task.Spec.Payload != nil || task.Version == 0 {
		t.Fatalf("answer = %+v; want a queued task with its payload size only", task)
	}
	if task.Spec.Queue != api.DefaultQueue || *task.Spec.Priority != api.DefaultPriority || task.Spec.Timeout.D() != api.DefaultTaskTimeout {
		t.Errorf("defaults not applied: %+v", task.Spec)
	}
	stored, err := store.Tasks.Get(ctx, e.st, task.ID)
	if err != nil || stored.Spec.Payload != nil || stored.PayloadSize != len(payload) {
		t.Fatalf("stored task = %+v, %v", stored, err)
	}
	got, err := e.cl.TaskPayload(ctx, task.ID)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("payload = %q, %v", got, err)
	}
	got2, err := e.cl.GetTask(ctx, task.ID)
	if err != nil || got2.ID != task.ID || got2.Version != task.Version {
		t.Fatalf("get = %+v, %v", got2, err)
	}
	// A task without a payload reads as empty.
	plain, err := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := e.cl.TaskPayload(ctx, plain.ID); err != nil || len(got) != 0 {
		t.Fatalf("payload of a task without one = %q, %v", got, err)
	}
	missing := api.NewTaskID(time.Now())
	for path, id := range map[string]string{"/v1/tasks/" + missing: missing, "/v1/tasks/" + missing + "/payload": missing, "/v1/tasks/nope": "nope"} {
		code, apiErr := e.send(t, "GET", path, "", nil)
		if code != 404 || !strings.Contains(apiErr.Error, id) {
			t.Errorf("GET %s: %d %+v, want 404 naming the id", path, code, apiErr)
		}
	}
}

func TestIdempotencyKey(t *testing.T) {
	e := newTaskServer(t)
	var first, again api.Task
	if code, apiErr := e.send(t, "POST", "/v1/tasks", specJSON(`"idempotency_key":"order-17"`), &first); code != 201 {
		t.Fatalf("first: %d %+v", code, apiErr)
	}
	if code, apiErr := e.send(t, "POST", "/v1/tasks", specJSON(`"idempotency_key":"order-17","command":["other"]`), &again); code != 200 || again.ID != first.ID {
		t.Fatalf("second with the same key: %d %+v %s; want 200 with task %s", code, apiErr, again.ID, first.ID)
	}
	// In a batch: the known key answers its first task; a key used twice
	// in the batch makes one task; the rest are created.
	var l api.List[api.Task]
	body := "[" + strings.Join([]string{
		specJSON(`"idempotency_key":"order-17"`),
		specJSON(`"idempotency_key":"order-18"`),
		specJSON(`"idempotency_key":"order-18"`),
		specJSON(""),
	}, ",") + "]"
	if code, apiErr := e.send(t, "POST", "/v1/tasks", body, &l); code != 201 || len(l.Items) != 4 {
		t.Fatalf("batch: %d %+v %d items", code, apiErr, len(l.Items))
	}
	it := l.Items
	if it[0].ID != first.ID || it[1].ID == first.ID || it[2].ID != it[1].ID || it[3].ID == it[1].ID || it[1].Version == 0 || it[2].Version == 0 {
		t.Fatalf("batch ids %s %s %s %s (first %s)", it[0].ID, it[1].ID, it[2].ID, it[3].ID, first.ID)
	}
	if n := count(t, e.st, store.Tasks); n != 3 {
		t.Errorf("%d tasks stored, want 3", n)
	}
	if n := count(t, e.st, store.TaskKeys); n != 2 {
		t.Errorf("%d keys stored, want 2", n)
	}
	// A key whose task is gone (removed after its retention) is free again.
	if _, err := e.st.Txn(context.Background(), store.Tasks.DeleteAny(first.ID)); err != nil {
		t.Fatal(err)
	}
	var fresh api.Task
	if code, apiErr := e.send(t, "POST", "/v1/tasks", specJSON(`"idempotency_key":"order-17"`), &fresh); code != 201 || fresh.ID == first.ID {
		t.Fatalf("key of a removed task: %d %+v %s", code, apiErr, fresh.ID)
	}
}

func TestBatchOf1000(t *testing.T) {
	e := newTaskServer(t)
	specs := make([]api.TaskSpec, api.MaxTaskBatch)
	for i := range specs {
		specs[i] = api.TaskSpec{Image: "berth/busybox:1", Command: []string{"echo", fmt.Sprint(i)},
			Payload: []byte(fmt.Sprintf("payload %d", i)), IdempotencyKey: fmt.Sprintf("job-%d", i)}
	}
	l, err := e.cl.SubmitTasks(context.Background(), specs)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != len(specs) {
		t.Fatalf("%d tasks answered, want %d", len(l.Items), len(specs))
	}
	for i, task := range l.Items {
		if task.Spec.Command[1] != fmt.Sprint(i) || (i > 0 && task.ID <= l.Items[i-1].ID) {
			t.Fatalf("item %d: %s %v; want the batch's order in ascending ids", i, task.ID, task.Spec.Command)
		}
	}
	for kind, n := range map[string]int{
		"tasks": count(t, e.st, store.Tasks), "payloads": count(t, e.st, store.Payloads), "keys": count(t, e.st, store.TaskKeys),
	} {
		if n != len(specs) {
			t.Errorf("%d %s stored, want %d", n, kind, len(specs))
		}
	}
	all, err := e.cl.ListTasks(context.Background(), client.TaskFilter{Limit: -1})
	if err != nil || len(all.Items) != len(specs) {
		t.Fatalf("list all: %d, %v", len(all.Items), err)
	}
}

// assign starts the next attempt of a task as the controller would.
func assign(t *testing.T, st *store.Store, id, node string) api.Task {
	t.Helper()
	task, err := store.Tasks.Update(context.Background(), st, id, func(task *api.Task) error {
		task.NotBefore = time.Time{}
		tasks.Assign(task, "cluster", node, time.Now())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return task
}

func TestListTasksFilters(t *testing.T) {
	e := newTaskServer(t)
	ctx := context.Background()
	var ids []string
	for _, q := range []string{"media", "media", "default", "media"} {
		task, err := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1", Queue: q})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.ID)
		time.Sleep(2 * time.Millisecond) // ids sort by the millisecond
	}
	assign(t, e.st, ids[1], "n1")
	if _, err := e.cl.CancelTask(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	got := func(f client.TaskFilter) []string {
		t.Helper()
		l, err := e.cl.ListTasks(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, task := range l.Items {
			out = append(out, task.ID)
		}
		return out
	}
	want := func(name string, got []string, want ...string) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	want("all, newest first", got(client.TaskFilter{}), ids[3], ids[2], ids[1], ids[0])
	want("queue", got(client.TaskFilter{Queue: "media"}), ids[3], ids[1], ids[0])
	want("state", got(client.TaskFilter{State: api.TaskCancelled}), ids[0])
	want("node", got(client.TaskFilter{Node: "n1"}), ids[1])
	want("active", got(client.TaskFilter{Queue: "media", Active: true}), ids[3], ids[1])
	want("limit", got(client.TaskFilter{Limit: 2}), ids[3], ids[2])
	for _, q := range []string{"state=done", "limit=0", "limit=x"} {
		if code, apiErr := e.send(t, "GET", "/v1/tasks?"+q, "", nil); code != 400 || apiErr.Field != strings.Split(q, "=")[0] {
			t.Errorf("%s: %d %+v, want 400 naming the field", q, code, apiErr)
		}
	}
}

func TestWatchTasks(t *testing.T) {
	e := newTaskServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := e.cl.ListTasks(ctx, client.TaskFilter{})
	if err != nil {
		t.Fatal(err)
	}
	events, _ := e.cl.WatchTasks(ctx, client.TaskFilter{Queue: "media"}, l.Revision)
	other, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1"})
	mine, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1", Queue: "media"})
	ev := <-events
	if ev.Object.ID != mine.ID || ev.Type != "put" {
		t.Fatalf("first event %s %s; want the media task %s, not %s", ev.Type, ev.Object.ID, mine.ID, other.ID)
	}
}

func report(id string, attempt int, state string, exit ...int) api.TaskReport {
	r := api.TaskReport{ID: id, Attempt: attempt, State: state}
	if len(exit) > 0 {
		r.ExitCode = &exit[0]
	}
	return r
}

func TestTaskReports(t *testing.T) {
	e := newTaskServer(t)
	ctx := context.Background()
	a, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1"})
	b, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1", Retries: 1})
	assign(t, e.st, a.ID, "n1")
	assign(t, e.st, b.ID, "n1")
	missing := api.NewTaskID(time.Now())
	res, err := e.cl.ReportTasks(ctx, []api.TaskReport{
		report(a.ID, 1, api.TaskRunning),
		report(a.ID, 1, api.TaskSucceeded, 0),
		report(b.ID, 1, api.TaskFailed, 3),
		report(a.ID, 2, api.TaskRunning), // no such attempt: stale
		report(missing, 1, api.TaskRunning),
		report(b.ID, 1, "exploded"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 6 {
		t.Fatalf("%d results for 6 reports", len(res))
	}
	check := func(i int, applied bool, state, errPart string) {
		t.Helper()
		r := res[i]
		if r.Applied != applied || (state != "" && (r.Task == nil || r.Task.State != state)) || !strings.Contains(r.Error, errPart) || (errPart == "" && r.Error != "") {
			t.Errorf("result %d = %+v (task %+v); want applied %v, state %q, error with %q", i, r, r.Task, applied, state, errPart)
		}
	}
	check(0, true, api.TaskSucceeded, "")
	check(1, true, api.TaskSucceeded, "")
	check(2, true, api.TaskRetrying, "")
	check(3, false, api.TaskSucceeded, "")
	check(4, false, "", "not found")
	check(5, false, "", "state")
	stored, _ := store.Tasks.Get(ctx, e.st, b.ID)
	if stored.State != api.TaskRetrying || stored.UserFailures != 1 || res[2].Task.Version != stored.Version {
		t.Fatalf("b after exit 3 with 1 retry: %+v", stored)
	}
	// The retry fails too: the task has used up its retries.
	assign(t, e.st, b.ID, "n1")
	res, err = e.cl.ReportTasks(ctx, []api.TaskReport{report(b.ID, 2, api.TaskFailed, 3)})
	if err != nil || !res[0].Applied || res[0].Task.State != api.TaskFailed || res[0].Task.Error != "exited with code 3" || len(res[0].Task.Attempts) != 2 {
		t.Fatalf("second failure: %+v %v", res, err)
	}
	// A report on the first attempt now is stale, and changes nothing.
	res, err = e.cl.ReportTasks(ctx, []api.TaskReport{report(b.ID, 1, api.TaskSucceeded, 0)})
	if err != nil || res[0].Applied || res[0].Task == nil || res[0].Task.State != api.TaskFailed {
		t.Fatalf("stale report: %+v %v", res, err)
	}
	if code, _ := e.send(t, "POST", "/v1/tasks/reports", `{"id":"x"}`, nil); code != 400 {
		t.Errorf("a report that is not an array: %d, want 400", code)
	}
}

// A task changed between the reads and the write of a batch (a cancel,
// here) makes the batch fall back to one task at a time, on the task as
// it is now.
func TestTaskReportsConflict(t *testing.T) {
	e := newTaskServer(t)
	ctx := context.Background()
	a, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1"})
	b, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1"})
	assign(t, e.st, a.ID, "n1")
	assign(t, e.st, b.ID, "n1")
	beforeReportTxn = func() {
		beforeReportTxn = nil
		if _, err := e.cl.CancelTask(ctx, a.ID); err != nil {
			t.Error(err)
		}
	}
	defer func() { beforeReportTxn = nil }()
	res, err := e.cl.ReportTasks(ctx, []api.TaskReport{report(a.ID, 1, api.TaskFailed, 1), report(b.ID, 1, api.TaskSucceeded, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if !res[0].Applied || res[0].Task.State != api.TaskCancelled || !res[1].Applied || res[1].Task.State != api.TaskSucceeded {
		t.Fatalf("results %+v %+v; want a cancelled (its cancel kept) and b succeeded", res[0].Task, res[1].Task)
	}
	for id, want := range map[string]string{a.ID: api.TaskCancelled, b.ID: api.TaskSucceeded} {
		if got, _ := store.Tasks.Get(ctx, e.st, id); got.State != want {
			t.Errorf("stored %s: %s, want %s", id, got.State, want)
		}
	}
}

func TestCancelTask(t *testing.T) {
	e := newTaskServer(t)
	ctx := context.Background()
	queued, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1"})
	running, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1"})
	assign(t, e.st, running.ID, "n1")

	got, err := e.cl.CancelTask(ctx, queued.ID)
	if err != nil || got.State != api.TaskCancelled {
		t.Fatalf("cancel queued: %+v %v", got, err)
	}
	got, err = e.cl.CancelTask(ctx, running.ID)
	if err != nil || got.State != api.TaskRunning || !got.CancelRequested {
		t.Fatalf("cancel running: %+v %v; want it running with the cancel asked", got, err)
	}
	if _, err := e.cl.CancelTask(ctx, running.ID); err != nil {
		t.Fatalf("cancel running twice: %v", err)
	}
	_, err = e.cl.CancelTask(ctx, queued.ID)
	if !client.IsStatus(err, 409) || !strings.Contains(err.Error(), "already cancelled") {
		t.Fatalf("cancel of an ended task: %v, want 409 already cancelled", err)
	}
	if _, err := e.cl.ReportTasks(ctx, []api.TaskReport{report(running.ID, 1, api.TaskCancelled, 143)}); err != nil {
		t.Fatal(err)
	}
	_, err = e.cl.CancelTask(ctx, running.ID)
	if !client.IsStatus(err, 409) || !strings.Contains(err.Error(), "task "+running.ID+" already cancelled") {
		t.Fatalf("cancel after the end: %v", err)
	}
	done, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1"})
	assign(t, e.st, done.ID, "n1")
	e.cl.ReportTasks(ctx, []api.TaskReport{report(done.ID, 1, api.TaskSucceeded, 0)})
	if _, err := e.cl.CancelTask(ctx, done.ID); !client.IsStatus(err, 409) || !strings.Contains(err.Error(), "already succeeded") {
		t.Fatalf("cancel of a succeeded task: %v", err)
	}
	if _, err := e.cl.CancelTask(ctx, api.NewTaskID(time.Now())); !client.IsStatus(err, 404) {
		t.Fatalf("cancel of no task: %v", err)
	}
}

func TestTaskLogs(t *testing.T) {
	e := newTaskServer(t)
	// A follow that never ends fails the test instead of hanging it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	task, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1"})

	// Followed before the task has an attempt: the stream waits for one.
	rc, err := e.cl.TaskLogs(ctx, task.ID, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	assign(t, e.st, task.ID, "n1")

	put := func(offset int64, data string, final bool) {
		t.Helper()
		if err := e.cl.PutTaskLog(ctx, task.ID, 1, offset, []byte(data), final); err != nil {
			t.Fatalf("put at %d: %v", offset, err)
		}
	}
	readN := func(n int) string {
		t.Helper()
		buf := make([]byte, n)
		if _, err := io.ReadFull(rc, buf); err != nil {
			t.Fatalf("follow: %v", err)
		}
		return string(buf)
	}
	put(0, "one\n", false)
	if got := readN(4); got != "one\n" {
		t.Fatalf("followed %q", got)
	}
	put(4, "two\n", false)
	put(4, "two\n", false) // retried: changes nothing
	if got := readN(4); got != "two\n" {
		t.Fatalf("followed %q", got)
	}
	if err := e.cl.PutTaskLog(ctx, task.ID, 1, 100, []byte("x"), false); !client.IsStatus(err, 400) {
		t.Fatalf("put past the end: %v, want 400", err)
	}
	put(8, "three\n", true)
	rest, err := io.ReadAll(rc) // ends: the log is final
	if err != nil || string(rest) != "three\n" {
		t.Fatalf("end of the follow: %q %v", rest, err)
	}

	for _, attempt := range []int{0, 1} {
		rc, err := e.cl.TaskLogs(ctx, task.ID, attempt, false)
		if err != nil {
			t.Fatal(err)
		}
		all, _ := io.ReadAll(rc)
		rc.Close()
		if string(all) != "one\ntwo\nthree\n" {
			t.Errorf("attempt %d: %q", attempt, all)
		}
	}
	if _, err := e.cl.TaskLogs(ctx, task.ID, 2, false); !client.IsStatus(err, 404) {
		t.Errorf("logs of attempt 2 of 1: %v, want 404", err)
	}
	// A task that ends before it ever ran: the follow ends, empty.
	never, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1"})
	rc2, err := e.cl.TaskLogs(ctx, never.ID, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer rc2.Close()
	if _, err := e.cl.CancelTask(ctx, never.ID); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(rc2); err != nil || len(b) != 0 {
		t.Fatalf("follow of a task cancelled while queued: %q %v", b, err)
	}
}

func TestSchedules(t *testing.T) {
	e := newTaskServer(t)
	ctx := context.Background()
	before := time.Now().UTC()
	var sc api.Schedule
	body := `{"cron":"@every 2s","task":{"image":"berth/busybox:1","command":["echo","hi"]}}`
	if code, apiErr := e.send(t, "PUT", "/v1/schedules/nightly", body, &sc); code != 201 {
		t.Fatalf("create: %d %+v", code, apiErr)
	}
	if sc.Name != "nightly" || sc.Overlap != api.OverlapSkip || sc.LastRun.Before(before) || sc.Task.Queue != api.DefaultQueue || sc.Version == 0 {
		t.Fatalf("created %+v; want the name filled, defaults, last run now", sc)
	}
	// The controller records a run; a replace keeps it.
	if _, err := store.Schedules.Update(ctx, e.st, "nightly", func(s *api.Schedule) error {
		s.LastTask, s.LastRun = "t1", s.LastRun.Add(time.Minute)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	repl, err := e.cl.PutSchedule(ctx, api.Schedule{Name: "nightly", Cron: "0 3 * * *", Overlap: api.OverlapAllow, Task: api.TaskSpec{Image: "berth/busybox:1"}, LastTask: "forged"})
	if err != nil || repl.Cron != "0 3 * * *" || repl.LastTask != "t1" || !repl.LastRun.Equal(sc.LastRun.Add(time.Minute)) || !repl.Created.Equal(sc.Created) {
		t.Fatalf("replaced %+v %v; want the new cron, the last run kept", repl, err)
	}
	if got, err := e.cl.GetSchedule(ctx, "nightly"); err != nil || got.Cron != "0 3 * * *" {
		t.Fatalf("get: %+v %v", got, err)
	}
	e.cl.PutSchedule(ctx, api.Schedule{Name: "a-first", Cron: "@hourly", Task: api.TaskSpec{Image: "berth/busybox:1"}})
	l, err := e.cl.ListSchedules(ctx)
	if err != nil || len(l.Items) != 2 || l.Items[0].Name != "a-first" {
		t.Fatalf("list: %+v %v", l.Items, err)
	}
	bad := []struct{ path, body, field string }{
		{"/v1/schedules/x", `{"cron":"61 * * * *","task":{"image":"berth/busybox:1"}}`, "cron"},
		{"/v1/schedules/x", `{"cron":"@every 100ms","task":{"image":"berth/busybox:1"}}`, "cron"},
		{"/v1/schedules/x", `{"cron":"@hourly","task":{"image":"Bad Image"}}`, "task.image"},
		{"/v1/schedules/x", `{"cron":"@hourly","overlap":"sometimes","task":{"image":"berth/busybox:1"}}`, "overlap"},
		{"/v1/schedules/x", `{"name":"y","cron":"@hourly","task":{"image":"berth/busybox:1"}}`, "name"},
		{"/v1/schedules/Bad_Name", `{"cron":"@hourly","task":{"image":"berth/busybox:1"}}`, "name"},
	}
	for _, c := range bad {
		if code, apiErr := e.send(t, "PUT", c.path, c.body, nil); code != 400 || apiErr.Field != c.field {
			t.Errorf("%s: %d %+v, want 400 naming %s", c.body, code, apiErr, c.field)
		}
	}
	if n := count(t, e.st, store.Schedules); n != 2 {
		t.Errorf("%d schedules stored after bad input, want 2", n)
	}
	if err := e.cl.DeleteSchedule(ctx, "nightly"); err != nil {
		t.Fatal(err)
	}
	if err := e.cl.DeleteSchedule(ctx, "nightly"); !client.IsStatus(err, 404) {
		t.Errorf("delete twice: %v, want 404", err)
	}
	if _, err := e.cl.GetSchedule(ctx, "nightly"); !client.IsStatus(err, 404) {
		t.Errorf("get deleted: %v, want 404", err)
	}
}

func TestQueues(t *testing.T) {
	e := newTaskServer(t)
	ctx := context.Background()
	q, err := e.cl.PutQueue(ctx, api.Queue{Name: "media", Concurrency: 4})
	if err != nil || q.Concurrency != 4 || q.Version == 0 {
		t.Fatalf("put queue: %+v %v", q, err)
	}
	e.cl.PutQueue(ctx, api.Queue{Name: "idle", Concurrency: 1})
	for _, body := range []string{`{"concurrency":-1}`, `{"name":"other","concurrency":1}`, `{"concurrency":"x"}`} {
		if code, apiErr := e.send(t, "PUT", "/v1/queues/media", body, nil); code != 400 || apiErr.Field == "" {
			t.Errorf("%s: %d %+v, want 400 naming a field", body, code, apiErr)
		}
	}
	if code, apiErr := e.send(t, "PUT", "/v1/queues/Bad_Q", `{"concurrency":1}`, nil); code != 400 || apiErr.Field != "name" {
		t.Errorf("bad queue name: %d %+v", code, apiErr)
	}
	var ids []string
	for _, queue := range []string{"media", "media", "media", "default"} {
		task, _ := e.cl.SubmitTask(ctx, api.TaskSpec{Image: "berth/busybox:1", Queue: queue})
		ids = append(ids, task.ID)
	}
	assign(t, e.st, ids[0], "n1")
	e.cl.CancelTask(ctx, ids[1])
	l, err := e.cl.ListQueues(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []api.QueueStatus{{Name: "default", Queued: 1}, {Name: "idle", Concurrency: 1}, {Name: "media", Concurrency: 4, Queued: 1, Running: 1}}
	if fmt.Sprint(l.Items) != fmt.Sprint(want) {
		t.Fatalf("queues %+v, want %+v", l.Items, want)
	}
}
