package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// ---- tasks as the API shows them ----

type task struct {
	ID               string    `json:"id"`
	Spec             taskSpec  `json:"spec"`
	State            string    `json:"state"`
	Node             string    `json:"node"`
	Attempts         []attempt `json:"attempts"`
	UserFailures     int       `json:"user_failures"`
	PlatformFailures int       `json:"platform_failures"`
	CancelRequested  bool      `json:"cancel_requested"`
	ExitCode         *int      `json:"exit_code"`
	Error            string    `json:"error"`
	Schedule         string    `json:"schedule"`
	PayloadSize      int       `json:"payload_size"`
	Created          time.Time `json:"created"`
	Ended            time.Time `json:"ended"`
}

type taskSpec struct {
	Image    string   `json:"image"`
	Command  []string `json:"command"`
	Queue    string   `json:"queue"`
	Priority *int     `json:"priority"`
	Retries  int      `json:"retries"`
}

type attempt struct {
	N            int       `json:"n"`
	Node         string    `json:"node"`
	Container    string    `json:"container"`
	ContainerID  string    `json:"container_id"`
	State        string    `json:"state"`
	Created      time.Time `json:"created"`
	Started      time.Time `json:"started"`
	Ended        time.Time `json:"ended"`
	ExitCode     *int      `json:"exit_code"`
	Error        string    `json:"error"`
	Platform     bool      `json:"platform"`
	LogBytes     int64     `json:"log_bytes"`
	LogTruncated bool      `json:"log_truncated"`
}

type schedule struct {
	Name     string    `json:"name"`
	Cron     string    `json:"cron"`
	Overlap  string    `json:"overlap"`
	LastRun  time.Time `json:"last_run"`
	LastTask string    `json:"last_task"`
}

type queueStatus struct {
	Name        string `json:"name"`
	Concurrency int    `json:"concurrency"`
	Queued      int    `json:"queued"`
	Running     int    `json:"running"`
}

func terminal(state string) bool {
	switch state {
	case "succeeded", "failed", "timed_out", "cancelled":
		return true
	}
	return false
}

func (t task) String() string {
	s := fmt.Sprintf("%s[%s queue=%s attempts=%d", t.ID, t.State, t.Spec.Queue, len(t.Attempts))
	if t.ExitCode != nil {
		s += fmt.Sprintf(" exit=%d", *t.ExitCode)
	}
	if t.Error != "" {
		s += " error=" + fmt.Sprintf("%q", t.Error)
	}
	for _, a := range t.Attempts {
		s += fmt.Sprintf(" #%d:%s", a.N, a.State)
		if a.Platform {
			s += "(platform)"
		}
		if a.Error != "" {
			s += fmt.Sprintf("(%q)", a.Error)
		}
	}
	return s + "]"
}

func describeTasks(ts []task) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = t.String()
	}
	return fmt.Sprintf("%d tasks: %s", len(ts), strings.Join(parts, " "))
}

var taskIDPattern = regexp.MustCompile(`^[0-9a-hjkmnp-tv-z]{16}$`)

// ---- the berth of a task test ----

// startTaskBerth starts berth for a task test. Besides startBerth's
// cleanup by the cluster label, it removes any container named as one
// of the cluster's task attempts, so that a task container that lacks
// its labels does not outlive the test either.
func startTaskBerth(t *testing.T) *berth {
	t.Helper()
	var b *berth
	// Registered first, so it runs last: after berth has been stopped.
	t.Cleanup(func() {
		if b != nil && b.cluster != "" {
			removeTaskContainers(t, b.cluster)
		}
	})
	b = startBerth(t)
	return b
}

// taskContainerPrefix is how every task container of a cluster is named:
// berth-<cluster[:8]>-task-<id>.<attempt>.
func taskContainerPrefix(cluster string) string {
	if len(cluster) > 8 {
		cluster = cluster[:8]
	}
	return "berth-" + cluster + "-task-"
}

func removeTaskContainers(t *testing.T, cluster string) {
	out, err := dockerCLI(30*time.Second, "ps", "-aq", "--filter", "name="+taskContainerPrefix(cluster))
	if err != nil {
		t.Errorf("cleanup: list task containers of cluster %s: %v: %s", cluster, err, out)
		return
	}
	if ids := strings.Fields(out); len(ids) > 0 {
		if out, err := dockerCLI(2*time.Minute, append([]string{"rm", "-f"}, ids...)...); err != nil {
			t.Errorf("cleanup: docker rm -f %v: %v: %s", ids, err, out)
		}
	}
}

// taskContainer is one container of a task attempt, as Docker lists it.
type taskContainer struct {
	ID, Name, State, Task string
}

// taskContainersErr lists the cluster's task containers (running or not),
// found by their name, with the task each belongs to. One `docker ps`, so
// that the list is one snapshot of the engine.
func taskContainersErr(cluster string) ([]taskContainer, error) {
	prefix := taskContainerPrefix(cluster)
	res, err := dockerCLI(30*time.Second, "ps", "-a", "--no-trunc", "--filter", "name="+prefix,
		"--format", `{{.ID}}\t{{.Names}}\t{{.State}}\t{{.Label "berth.task"}}`)
	if err != nil {
		return nil, fmt.Errorf("docker ps --filter name=%s: %v: %s", prefix, err, res)
	}
	var out []taskContainer
	for _, line := range strings.Split(strings.TrimSpace(res), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 4 {
			continue
		}
		c := taskContainer{ID: f[0], Name: f[1], State: f[2], Task: f[3]}
		if c.Task == "" { // no label: the task id is in the name
			c.Task, _, _ = strings.Cut(strings.TrimPrefix(c.Name, prefix), ".")
		}
		out = append(out, c)
	}
	return out, nil
}

// containersOfTask lists the containers (running or not) of one task.
func containersOfTask(t *testing.T, cluster, id string) []taskContainer {
	t.Helper()
	all, err := taskContainersErr(cluster)
	if err != nil {
		t.Fatal(err)
	}
	var mine []taskContainer
	for _, c := range all {
		if c.Task == id {
			mine = append(mine, c)
		}
	}
	return mine
}

// waitNoTaskContainer waits until Docker has no container of the task,
// and checks that the engine does not know the attempts' containers.
func (b *berth) waitNoTaskContainer(t *testing.T, tk task) {
	t.Helper()
	waitFor(t, 20*time.Second, func() (bool, string) {
		cs := containersOfTask(t, b.cluster, tk.ID)
		return len(cs) == 0, fmt.Sprintf("containers of task %s still exist: %+v", tk.ID, cs)
	})
	for _, a := range tk.Attempts {
		for _, ref := range []string{a.Container, a.ContainerID} {
			if ref == "" {
				continue
			}
			if out, err := dockerCLI(30*time.Second, "inspect", "--format", "{{.State.Status}}", ref); err == nil {
				t.Errorf("docker inspect %s (attempt %d of %s): the container still exists: %s", ref, a.N, tk.ID, out)
			} else if !strings.Contains(strings.ToLower(out), "no such") {
				t.Errorf("docker inspect %s: %v: %s", ref, err, out)
			}
		}
	}
}

// ---- the task API ----

// submit POSTs one task (a JSON object) and returns it.
func (b *berth) submit(t *testing.T, spec map[string]any) task {
	t.Helper()
	body, _ := json.Marshal(spec)
	code, data := b.request(t, "POST", "/v1/tasks", body, "application/json")
	if code != 201 && code != 200 {
		t.Fatalf("POST /v1/tasks %s: %d %s", body, code, data)
	}
	var tk task
	if err := json.Unmarshal(data, &tk); err != nil || !taskIDPattern.MatchString(tk.ID) {
		t.Fatalf("POST /v1/tasks: answer is not a task with an id (%v): %s", err, data)
	}
	return tk
}

// submitBatch POSTs a list of tasks in one request.
func (b *berth) submitBatch(t *testing.T, specs []map[string]any) []task {
	t.Helper()
	body, _ := json.Marshal(specs)
	code, data := b.request(t, "POST", "/v1/tasks", body, "application/json")
	if code != 201 && code != 200 {
		t.Fatalf("POST /v1/tasks (batch of %d): %d %s", len(specs), code, data)
	}
	var l list[task]
	if err := json.Unmarshal(data, &l); err != nil || len(l.Items) != len(specs) {
		t.Fatalf("POST /v1/tasks (batch of %d): want a list of %d tasks (%v): %.500s", len(specs), len(specs), err, data)
	}
	return l.Items
}

func (b *berth) getTask(t *testing.T, id string) task {
	t.Helper()
	var tk task
	b.getJSON(t, "/v1/tasks/"+id, &tk)
	return tk
}

// listTasks lists tasks (all of them) matching a query such as "queue=x".
func (b *berth) listTasks(t *testing.T, query string) []task {
	t.Helper()
	ts, err := b.listTasksErr(query)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func (b *berth) listTasksErr(query string) ([]task, error) {
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, err
	}
	q.Set("limit", "-1")
	var l list[task]
	err = b.getJSONErr("/v1/tasks?"+q.Encode(), &l)
	return l.Items, err
}

// waitTask polls a task until cond holds.
func (b *berth) waitTask(t *testing.T, id string, timeout time.Duration, what string, cond func(task) bool) task {
	t.Helper()
	var tk task
	waitFor(t, timeout, func() (bool, string) {
		if err := b.getJSONErr("/v1/tasks/"+id, &tk); err != nil {
			return false, err.Error()
		}
		return cond(tk), fmt.Sprintf("task %s not %s: %s", id, what, tk)
	})
	return tk
}

func (b *berth) waitTerminal(t *testing.T, id string, timeout time.Duration) task {
	t.Helper()
	return b.waitTask(t, id, timeout, "ended", func(tk task) bool { return terminal(tk.State) })
}

// waitRunning waits until the task's current attempt runs in its container.
func (b *berth) waitRunning(t *testing.T, id string, timeout time.Duration) task {
	t.Helper()
	return b.waitTask(t, id, timeout, "running", func(tk task) bool {
		return tk.State == "running" && len(tk.Attempts) > 0 && tk.Attempts[len(tk.Attempts)-1].State == "running"
	})
}

// taskLogs reads an attempt's log through the API (attempt 0: the latest).
func (b *berth) taskLogs(t *testing.T, id string, attempt int) string {
	t.Helper()
	path := "/v1/tasks/" + id + "/logs"
	if attempt > 0 {
		path += fmt.Sprintf("?attempt=%d", attempt)
	}
	code, data := b.request(t, "GET", path, nil, "")
	if code != 200 {
		t.Fatalf("GET %s: %d %s", path, code, data)
	}
	return string(data)
}

// mustCLI runs a verb and requires exit 0.
func (b *berth) mustCLI(t *testing.T, args ...string) cliResult {
	t.Helper()
	r := b.cli(t, args...)
	if r.code != 0 {
		t.Fatalf("want exit 0:\n%s", r)
	}
	return r
}

// ---- the tables of the CLI ----

// table parses a CLI table whose header starts with header; each row is
// split on runs of spaces, the last column taking the rest of the line.
func table(t *testing.T, r cliResult, header string) [][]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], header) {
		t.Fatalf("no header %q:\n%s", header, r)
	}
	cols := len(strings.Fields(lines[0]))
	var rows [][]string
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) > cols {
			f = append(f[:cols-1], strings.Join(f[cols-1:], " "))
		}
		rows = append(rows, f)
	}
	return rows
}

// ---- a CLI that runs in the background ----

type bgCLI struct {
	args           []string
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
	err            error
}

// startCLI starts a berth verb without waiting for it; it is killed at the
// end of the test if it is still running.
func (b *berth) startCLI(t *testing.T, args ...string) *bgCLI {
	t.Helper()
	p := &bgCLI{args: args, done: make(chan struct{})}
	p.cmd = exec.Command(berthBin, args...)
	p.cmd.Env = append(cleanEnv(), "BERTH_ADDR="+b.addr, "BERTH_TOKEN="+b.token)
	p.cmd.Dir = t.TempDir()
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start berth %v: %v", args, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for the verb to exit and returns what it printed.
func (p *bgCLI) wait(t *testing.T, timeout time.Duration) cliResult {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("berth %v did not exit within %s; stdout:\n%s\nstderr:\n%s", p.args, timeout, p.stdout.String(), p.stderr.String())
	}
	r := cliResult{args: p.args, stdout: p.stdout.String(), stderr: p.stderr.String()}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
	case errors.As(p.err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("berth %v: %v", p.args, p.err)
	}
	t.Logf("(background) %s", r)
	return r
}

// ---- time ranges ----

// span is when something held a slot, from start to end.
type span struct {
	who        string
	start, end time.Time
}

// maxOverlap is the largest number of spans that hold at one instant
// (a span that ends exactly when another starts does not overlap it),
// and the spans that did.
func maxOverlap(spans []span) (int, []string) {
	type edge struct {
		at    time.Time
		delta int
		who   string
	}
	var edges []edge
	for _, s := range spans {
		edges = append(edges, edge{s.start, +1, s.who}, edge{s.end, -1, s.who})
	}
	sort.Slice(edges, func(i, j int) bool {
		if !edges[i].at.Equal(edges[j].at) {
			return edges[i].at.Before(edges[j].at)
		}
		return edges[i].delta < edges[j].delta // ends before starts
	})
	cur, best := 0, 0
	holding := map[string]bool{}
	var worst []string
	for _, e := range edges {
		cur += e.delta
		if e.delta > 0 {
			holding[e.who] = true
		} else {
			delete(holding, e.who)
		}
		if cur > best {
			best = cur
			worst = worst[:0]
			for w := range holding {
				worst = append(worst, w)
			}
			sort.Strings(worst)
		}
	}
	return best, worst
}

// attemptSpans are the attempts of tasks as spans from assignment
// (created) to end; an attempt not ended yet ends now.
func attemptSpans(ts []task) []span {
	var out []span
	for _, tk := range ts {
		for _, a := range tk.Attempts {
			end := a.Ended
			if end.IsZero() {
				end = time.Now()
			}
			out = append(out, span{fmt.Sprintf("%s#%d", tk.ID, a.N), a.Created, end})
		}
	}
	return out
}
