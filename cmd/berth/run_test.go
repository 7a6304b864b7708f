package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"berth/api"
	"berth/internal/client"
)

func intp(v int) *int { return &v }

func ts(sec int) time.Time { return time.Date(2026, 11, 28, 3, 0, sec, 0, time.UTC) }

func TestTaskExitCode(t *testing.T) {
	for _, c := range []struct {
		task api.Task
		want int
	}{
		{api.Task{State: api.TaskSucceeded, Attempts: []api.Attempt{{ExitCode: intp(0)}}}, 0},
		{api.Task{State: api.TaskFailed, Attempts: []api.Attempt{{ExitCode: intp(3)}}}, 3},
		{api.Task{State: api.TaskFailed, Attempts: []api.Attempt{{ExitCode: intp(3)}, {Error: "image missing"}}}, 1},
		{api.Task{State: api.TaskFailed}, 1},
		{api.Task{State: api.TaskTimedOut, Attempts: []api.Attempt{{ExitCode: intp(137)}}}, 124},
		{api.Task{State: api.TaskCancelled}, 130},
	} {
		if got := taskExitCode(c.task); got != c.want {
			t.Errorf("taskExitCode(%s, %+v) = %d, want %d", c.task.State, c.task.Attempts, got, c.want)
		}
	}
}

func TestSummary(t *testing.T) {
	tk := api.Task{ID: "0123456789abcdef", State: api.TaskFailed, Error: "exited with code 3", Attempts: make([]api.Attempt, 2)}
	if got, want := summary(tk), "task 0123456789abcdef failed after 2 attempts: exited with code 3"; got != want {
		t.Errorf("summary = %q, want %q", got, want)
	}
	tk = api.Task{ID: "0123456789abcdef", State: api.TaskCancelled, Error: "cancelled before it ran to the end"}
	if got := summary(tk); !strings.Contains(got, "cancelled before it ran") {
		t.Errorf("summary of a task cancelled while queued = %q", got)
	}
}

func TestReadPayload(t *testing.T) {
	dir := t.TempDir()
	small, big := filepath.Join(dir, "small"), filepath.Join(dir, "big")
	os.WriteFile(small, []byte("{}"), 0o644)
	os.WriteFile(big, make([]byte, api.MaxPayload+1), 0o644)
	if got, err := readPayload("@"+small, nil); err != nil || string(got) != "{}" {
		t.Errorf("@small: %q %v", got, err)
	}
	if got, err := readPayload("@-", strings.NewReader("from stdin")); err != nil || string(got) != "from stdin" {
		t.Errorf("@-: %q %v", got, err)
	}
	if got, err := readPayload("literal", nil); err != nil || string(got) != "literal" {
		t.Errorf("literal: %q %v", got, err)
	}
	if _, err := readPayload("@"+big, nil); err == nil || !strings.Contains(err.Error(), "1 MiB") {
		t.Errorf("@big: want an error naming the 1 MiB limit, got %v", err)
	}
	if _, err := readPayload(strings.Repeat("x", api.MaxPayload+1), nil); err == nil {
		t.Errorf("a literal over 1 MiB: want an error")
	}
}

func TestResumeWriterSkipsWhatWasWritten(t *testing.T) {
	var out bytes.Buffer
	w := &resumeWriter{w: &out}
	w.Write([]byte("hel"))
	w.pos = 0 // the stream starts again from its beginning
	w.Write([]byte("he"))
	w.Write([]byte("llo\n"))
	if out.String() != "hello\n" {
		t.Errorf("got %q, want %q", out.String(), "hello\n")
	}
}

// fakeTaskServer answers GET /v1/tasks/{id} with the next of a list of
// states (staying on the last), and the logs of each attempt; the first
// request for attempt 1's log breaks off after a few bytes.
type fakeTaskServer struct {
	mu     sync.Mutex
	states []api.Task
	logs   map[string]string
	broken bool
}

func (f *fakeTaskServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if strings.HasSuffix(r.URL.Path, "/logs") {
		attempt := r.URL.Query().Get("attempt")
		log := f.logs[attempt]
		if attempt == "1" && !f.broken {
			f.broken = true
			w.Header().Set("Content-Length", "100") // promise more than is sent
			w.Write([]byte(log[:3]))
			return
		}
		w.Write([]byte(log))
		return
	}
	t := f.states[0]
	if len(f.states) > 1 {
		f.states = f.states[1:]
	}
	json.NewEncoder(w).Encode(t)
}

func TestFollowTaskAcrossAttempts(t *testing.T) {
	ended := api.Attempt{N: 1, State: api.TaskFailed, ExitCode: intp(3), Ended: ts(1)}
	second := api.Attempt{N: 2, State: api.TaskRunning}
	secondEnded := api.Attempt{N: 2, State: api.TaskFailed, ExitCode: intp(3), Ended: ts(2)}
	id := "0123456789abcdef"
	f := &fakeTaskServer{
		logs: map[string]string{"1": "first attempt\n", "2": "second attempt\n"},
		states: []api.Task{
			{ID: id, State: api.TaskQueued},
			{ID: id, State: api.TaskRunning, Attempts: []api.Attempt{{N: 1, State: api.TaskRunning}}},
			{ID: id, State: api.TaskRetrying, Attempts: []api.Attempt{ended}},
			{ID: id, State: api.TaskRunning, Attempts: []api.Attempt{ended, second}},
			{ID: id, State: api.TaskFailed, Error: "exited with code 3", Attempts: []api.Attempt{ended, secondEnded}},
		},
	}
	srv := httptest.NewServer(f)
	defer srv.Close()
	var out, errOut bytes.Buffer
	tk, err := followTask(context.Background(), client.New(srv.URL, "t"), id, 1, &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "first attempt\nsecond attempt\n" {
		t.Errorf("output %q: want each attempt's log once, in order", out.String())
	}
	if !strings.Contains(errOut.String(), "--- attempt 2 (attempt 1 failed: exited with code 3) ---") {
		t.Errorf("stderr lacks the line between attempts:\n%s", errOut.String())
	}
	if tk.State != api.TaskFailed || taskExitCode(tk) != 3 {
		t.Errorf("ended as %s with exit code %d, want failed and 3", tk.State, taskExitCode(tk))
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Hour: "1h", 90 * time.Minute: "1h30m", 10 * time.Second: "10s", time.Minute: "1m",
		time.Hour + time.Second: "1h0m1s", 1500 * time.Millisecond: "1.5s",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%s) = %q, want %q", d, got, want)
		}
	}
}
