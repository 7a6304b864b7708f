package e2e

// The README's walkthrough ("Five minutes with berth") and its "Tasks",
// run as a user runs them: each line of the blocks marked
// `<!-- readme-test: ... -->` in one shell, against `berth up` started as
// `make up` starts it, each checked for what its comment promises. The
// table below holds every line with its comment as the README has it: a
// changed line or comment fails TestReadmeBlocksMatch until the check here
// is changed with it.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// readmeStep is one README line and what the test checks of it.
type readmeStep struct {
	cmd, comment string
	// follow: the line runs until Ctrl-C; the test interrupts it after a few seconds.
	follow bool
	// within: what the comment says may take a moment (a restart, a
	// schedule's first run): the line is run again until it holds.
	within time.Duration
	// check says what is wrong, or nil.
	check func(w *walk, r lineResult) error
}

// walk is the state the lines share: berth, the shell, and what earlier
// lines printed that later ones use in place of a placeholder.
type walk struct {
	t    *testing.T
	b    *berth
	sh   *shell
	dir  string
	port string // <port>: an instance's published port, from `berth ps`
	id   string // <id>: the first task's id, from `berth run`
}

var walkthroughSteps = []readmeStep{
	{cmd: `export PATH=$PWD/bin:$PATH`, check: func(w *walk, r lineResult) error {
		if got := strings.TrimSpace(w.sh.run(w.t, "command -v berth", 10*time.Second).stdout); got != w.dir+"/bin/berth" {
			return fmt.Errorf("after it, berth is %q, want %s/bin/berth", got, w.dir)
		}
		return nil
	}},
	{cmd: `berth ps hello`, comment: `3 instances: state, node, address, age, restarts`, check: checkPsThree},
	{cmd: `curl http://127.0.0.1:<port>/`, comment: `a port from ` + "`berth ps`" + `: "hello from hello-1.<node> (GREETING=hi)"`,
		check: func(w *walk, r lineResult) error {
			return wantOutput(r, 0, "hello from hello-1."+w.b.node+" (GREETING=hi)")
		}},
	{cmd: `berth logs hello -f`, comment: `every instance's output, prefixed by instance, until Ctrl-C`, follow: true,
		check: func(w *walk, r lineResult) error {
			for _, inst := range []string{"hello-1", "hello-2", "hello-3"} {
				if !regexp.MustCompile(`(?m)^` + inst + ` +\| listening on :8080$`).MatchString(r.stdout) {
					return fmt.Errorf("no line %q", inst+" | listening on :8080")
				}
			}
			return nil
		}},
	{cmd: `berth scale hello 5`, comment: `follows until 5 are healthy`, check: func(w *walk, r lineResult) error {
		if r.code != 0 {
			return fmt.Errorf("exit %d", r.code)
		}
		if insts := w.b.instances(w.t, "hello"); countRoutable(insts) != 5 {
			return fmt.Errorf("when it returned: %s", describe(insts))
		}
		return nil
	}},
	{cmd: `berth events`, comment: `placed, started, healthy, exited, restarted, retired, removed ...`,
		check: func(w *walk, r lineResult) error {
			return wantOutput(r, 0, "hello-5", "placed", "started", "healthy", "scaled")
		}},
	{cmd: `docker kill $(docker ps -q --filter label=berth.instance=hello-1)`, check: func(w *walk, r lineResult) error {
		id := byName(w.b.instances(w.t, "hello"))["hello-1"].Status.ContainerID
		if r.code != 0 || id == "" || !strings.HasPrefix(id, strings.TrimSpace(r.stdout)) || strings.TrimSpace(r.stdout) == "" {
			return fmt.Errorf("want exit 0 and the container of hello-1 (%s) killed", id)
		}
		return nil
	}},
	{cmd: `berth ps hello`, comment: `hello-1 restarted: RESTARTS 1, LAST EXIT 137`, within: 20 * time.Second,
		check: func(w *walk, r lineResult) error {
			cols, rows, err := parseTable(r.stdout, "INSTANCE")
			if err != nil {
				return err
			}
			row, ok := rowOf(rows, "hello-1")
			st, rs, le := column(cols, "STATE"), column(cols, "RESTARTS"), column(cols, "LAST EXIT")
			if !ok || st < 0 || le < 0 || len(row) <= le || row[st] != "running" || row[rs] != "1" || row[le] != "137" {
				return fmt.Errorf("want hello-1 running with RESTARTS 1 and LAST EXIT 137")
			}
			return nil
		}},
	{cmd: `sed 's/GREETING: hi/GREETING: hello/' examples/hello.yaml > /tmp/hello2.yaml`, check: func(w *walk, r lineResult) error {
		data, err := os.ReadFile(filepath.Join(w.dir, "tmp", "hello2.yaml"))
		if r.code != 0 || err != nil || !strings.Contains(string(data), "GREETING: hello") {
			return fmt.Errorf("want exit 0 and /tmp/hello2.yaml with GREETING: hello: %v %q", err, data)
		}
		return nil
	}},
	{cmd: `berth deploy -f /tmp/hello2.yaml`, comment: `rolling update, one instance at a time, shown as it goes`, check: checkRolledOut},
	{cmd: `berth apps; berth nodes; berth status`, check: func(w *walk, r lineResult) error {
		return wantOutput(r, 0, "hello", "berth/demo:1", w.b.node, "ready", w.b.cluster, "ok")
	}},
	{cmd: `curl -H 'Host: hello.localtest.me' http://127.0.0.1:8080/`, comment: `through the gateway, spread over the instances`,
		check: func(w *walk, r lineResult) error {
			if err := wantOutput(r, 0, "hello from hello-", "(GREETING=hello)"); err != nil {
				return err
			}
			seen, fails := w.b.sample("hello.localtest.me", 20)
			if len(fails) > 0 || len(seen) < 2 {
				return fmt.Errorf("20 more requests through the gateway: answered by %v, failed %q; want several instances, no failure", seen, fails)
			}
			return nil
		}},
	// The gateway reports access times to the server every 2 s at most.
	{cmd: `berth routes`, comment: `host -> app -> healthy instances, idle state, last access`, within: 10 * time.Second, check: func(w *walk, r lineResult) error {
		_, rows, err := parseTable(r.stdout, "HOST")
		if err != nil {
			return err
		}
		row, ok := rowOf(rows, "hello.localtest.me")
		want := countRoutable(w.b.instances(w.t, "hello"))
		if !ok || len(row) < 5 || row[1] != "hello" || len(strings.Split(row[2], ",")) != want || !strings.HasSuffix(row[len(row)-1], "ago") {
			return fmt.Errorf("want a row hello.localtest.me -> hello with its %d healthy instances and a last access", want)
		}
		return nil
	}},
	{cmd: `berth rm hello`, comment: `returns when every container of the app is gone`, check: func(w *walk, r lineResult) error {
		if cs := containers(w.t, w.b.cluster, "berth.app=hello"); r.code != 0 || len(cs) > 0 {
			return fmt.Errorf("want exit 0 and no container of hello when it returns: %s", describeContainers(cs))
		}
		return nil
	}},
}

var tasksSteps = []readmeStep{
	{cmd: `berth run berth/busybox:1 -- sh -c 'echo hi; exit 3'`, comment: `queues it, prints its id`, check: func(w *walk, r lineResult) error {
		w.id = strings.TrimSpace(r.stdout)
		if r.code != 0 || !taskIDPattern.MatchString(w.id) {
			return fmt.Errorf("want exit 0 and a task id alone on stdout")
		}
		return nil
	}},
	{cmd: `berth run --wait berth/busybox:1 -- sh -c 'echo hi; exit 3'`,
		comment: `prints "hi", then "task 06h... failed after 1 attempt: exited with code 3"; exit code 3`,
		check: func(w *walk, r lineResult) error {
			if r.code != 3 || r.stdout != "hi\n" || !regexp.MustCompile(`task 06h\w+ failed after 1 attempt: exited with code 3`).MatchString(r.stderr) {
				return fmt.Errorf("want exit 3, stdout \"hi\" and the summary on stderr")
			}
			return nil
		}},
	{cmd: `echo '{"file": "a.png"}' > /tmp/job.json`, check: func(w *walk, r lineResult) error { return wantOutput(r, 0) }},
	{cmd: `berth run --wait --retries 2 --timeout 30s --queue media --cpu 500m --memory 64Mi --env MODE=fast --payload @/tmp/job.json berth/busybox:1 -- sh -c 'cat $BERTH_PAYLOAD; echo "task $BERTH_TASK_ID attempt $BERTH_ATTEMPT mode $MODE"'`,
		check: func(w *walk, r lineResult) error {
			if !regexp.MustCompile(`^\{"file": "a\.png"\}\ntask 06h\w{13} attempt 1 mode fast\n$`).MatchString(r.stdout) || r.code != 0 {
				return fmt.Errorf(`want exit 0 and the payload, then "task <id> attempt 1 mode fast"`)
			}
			return nil
		}},
	{cmd: `berth tasks`, comment: `ID, QUEUE, STATE, ATTEMPTS, EXIT, DURATION, AGE, newest first`, check: func(w *walk, r lineResult) error {
		cols, rows, err := parseTable(r.stdout, "ID")
		if err != nil {
			return err
		}
		if strings.Join(cols[:min(7, len(cols))], ", ") != "ID, QUEUE, STATE, ATTEMPTS, EXIT, DURATION, AGE" || len(rows) != 3 ||
			rows[0][1] != "media" || rows[0][2] != "succeeded" || rows[2][0] != w.id {
			return fmt.Errorf("want those columns and 3 tasks, the payload one (media, succeeded) first and %s last", w.id)
		}
		return nil
	}},
	{cmd: `berth tasks --state failed`, comment: `or --queue media, --state active, --limit 0 for all`, within: 30 * time.Second,
		check: func(w *walk, r lineResult) error {
			_, rows, err := parseTable(r.stdout, "ID")
			if err != nil {
				return err
			}
			for _, row := range rows {
				if len(row) < 3 || row[2] != "failed" {
					return fmt.Errorf("a task that is not failed: %q", row)
				}
			}
			if _, ok := rowOf(rows, w.id); len(rows) != 2 || !ok {
				return fmt.Errorf("want the 2 tasks that exited 3, %s among them", w.id)
			}
			return nil
		}},
	{cmd: `berth task show <id>`, comment: `the task and every attempt: node, container, start, end, exit code, error`,
		check: func(w *walk, r lineResult) error {
			container := taskContainerPrefix(w.b.cluster) + w.id + ".1"
			return wantOutput(r, 0, w.id, "ATTEMPT", "STARTED", "ENDED", "EXIT", "ERROR", w.b.node, container, "exited with code 3")
		}},
	{cmd: `berth task logs <id>`, comment: `its output, read from the server: the container is already gone`,
		check: func(w *walk, r lineResult) error {
			if cs := containersOfTask(w.t, w.b.cluster, w.id); r.code != 0 || r.stdout != "hi\n" || len(cs) > 0 {
				return fmt.Errorf("want exit 0 and \"hi\", with no container of the task left: %+v", cs)
			}
			return nil
		}},
	{cmd: `id=$(berth run berth/busybox:1 -- sleep 600); sleep 2`, check: func(w *walk, r lineResult) error {
		if id := w.sh.value(w.t, "id"); r.code != 0 || !taskIDPattern.MatchString(id) {
			return fmt.Errorf("want exit 0 and $id a task id, got %q", id)
		}
		return nil
	}},
	{cmd: `berth task cancel $id`, comment: `SIGTERM, then SIGKILL after its stop grace: state cancelled`, check: func(w *walk, r lineResult) error {
		if r.code != 0 {
			return fmt.Errorf("exit %d", r.code)
		}
		tk := w.b.waitTerminal(w.t, w.sh.value(w.t, "id"), 30*time.Second)
		if tk.State != "cancelled" || len(tk.Attempts) != 1 {
			return fmt.Errorf("want the task cancelled: %s", tk)
		}
		return nil
	}},
	{cmd: `berth queue set media --concurrency 2`, comment: `at most 2 of queue media run at once`, check: func(w *walk, r lineResult) error {
		var qs list[queueStatus]
		w.b.getJSON(w.t, "/v1/queues", &qs)
		for _, q := range qs.Items {
			if q.Name == "media" && q.Concurrency == 2 && r.code == 0 {
				return nil
			}
		}
		return fmt.Errorf("want exit 0 and queue media with concurrency 2: %+v", qs.Items)
	}},
	{cmd: `berth queue ls`, comment: `NAME, CONCURRENCY, QUEUED, RUNNING`, check: func(w *walk, r lineResult) error {
		cols, rows, err := parseTable(r.stdout, "NAME")
		if err != nil {
			return err
		}
		if row, ok := rowOf(rows, "media"); strings.Join(cols, ", ") != "NAME, CONCURRENCY, QUEUED, RUNNING" || !ok || row[1] != "2" {
			return fmt.Errorf("want those columns and media with concurrency 2")
		}
		return nil
	}},
	{cmd: `berth schedule create tick --cron '@every 10s' berth/busybox:1 -- date`, check: func(w *walk, r lineResult) error {
		return wantOutput(r, 0, "tick")
	}},
	{cmd: `berth schedule ls`, comment: `NAME, CRON, OVERLAP, LAST RUN, LAST TASK, IMAGE`, check: func(w *walk, r lineResult) error {
		cols, rows, err := parseTable(r.stdout, "NAME")
		if err != nil {
			return err
		}
		if _, ok := rowOf(rows, "tick"); strings.Join(cols, ", ") != "NAME, CRON, OVERLAP, LAST RUN, LAST TASK, IMAGE" || !ok ||
			!strings.Contains(r.stdout, "@every 10s") || !strings.Contains(r.stdout, "berth/busybox:1") {
			return fmt.Errorf("want those columns and tick, @every 10s, berth/busybox:1")
		}
		return nil
	}},
	{cmd: `berth tasks --schedule tick`, comment: `the tasks it queued, once it has fired (after 10 s)`, within: 25 * time.Second,
		check: func(w *walk, r lineResult) error {
			_, rows, err := parseTable(r.stdout, "ID")
			if err != nil {
				return err
			}
			made := w.b.listTasks(w.t, "schedule=tick")
			if len(rows) == 0 || len(rows) != len(made) {
				return fmt.Errorf("want the schedule's tasks (%s)", describeTasks(made))
			}
			return nil
		}},
	{cmd: `berth schedule rm tick`, comment: `the tasks it made stay`, check: func(w *walk, r lineResult) error {
		code, _ := w.b.request(w.t, "GET", "/v1/schedules/tick", nil, "")
		if made := w.b.listTasks(w.t, "schedule=tick"); r.code != 0 || code != 404 || len(made) == 0 {
			return fmt.Errorf("want exit 0, the schedule gone (GET: %d) and its tasks kept (%d)", code, len(made))
		}
		return nil
	}},
}

// TestReadmeBlocksMatch: the README's marked blocks hold exactly the lines
// and comments the walkthrough test checks. It needs no Docker.
func TestReadmeBlocksMatch(t *testing.T) {
	readme := readReadme(t)
	for _, block := range []struct {
		name  string
		steps []readmeStep
	}{{"walkthrough", walkthroughSteps}, {"tasks", tasksSteps}} {
		lines, err := readmeBlock(readme, block.name)
		if err != nil {
			t.Fatal(err)
		}
		for i := range max(len(lines), len(block.steps)) {
			var got readmeLine
			var want readmeStep
			if i < len(lines) {
				got = lines[i]
			}
			if i < len(block.steps) {
				want = block.steps[i]
			}
			if got.cmd != want.cmd || got.comment != want.comment {
				t.Errorf("README.md, block %s, line %d:\n  README: %q  # %q\n  test:   %q  # %q\n"+
					"change test/e2e/readme_test.go to check what the README says now", block.name, i+1, got.cmd, got.comment, want.cmd, want.comment)
			}
		}
	}
}

// TestReadmeWalkthrough runs the walkthrough, then its tasks, in a fresh
// directory laid out like the repository: bin/berth, examples/hello.yaml.
func TestReadmeWalkthrough(t *testing.T) {
	t.Parallel()
	needDocker(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(berthBin, filepath.Join(dir, "bin", "berth")); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(repoRoot, "examples", "hello.yaml"), filepath.Join(dir, "examples", "hello.yaml"))
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := startBerthAsMakeUp(t, dir)
	// The second terminal: the CLI finds the token in ./.berth; only the
	// address differs from the default.
	w := &walk{t: t, b: b, dir: dir, sh: startShell(t, dir, append(cleanEnv(), "BERTH_ADDR="+b.addr))}

	// What make up does once berth answers.
	if r := w.sh.run(t, "./bin/berth deploy -f examples/hello.yaml && ./bin/berth ps hello", 2*time.Minute); r.code != 0 {
		t.Fatalf("the deploy make up does failed:\n%s", r)
	}
	lines := map[string][]readmeLine{}
	for _, name := range []string{"walkthrough", "tasks"} {
		var err error
		if lines[name], err = readmeBlock(readReadme(t), name); err != nil {
			t.Fatal(err)
		}
	}
	w.runAll("walkthrough", lines["walkthrough"], walkthroughSteps)
	w.runAll("tasks", lines["tasks"], tasksSteps)
}

// runAll runs the README's lines, each checked by its step; a line that
// fails its check is reported and the rest still run (a later line may
// depend on it, so its failure is reported too).
func (w *walk) runAll(block string, lines []readmeLine, steps []readmeStep) {
	t := w.t
	if len(lines) != len(steps) {
		t.Errorf("README.md, block %s: %d lines, the test knows %d (see TestReadmeBlocksMatch)", block, len(lines), len(steps))
	}
	for i := range min(len(lines), len(steps)) {
		l, s := lines[i], steps[i]
		if l.cmd != s.cmd || l.comment != s.comment {
			t.Errorf("README.md, block %s, line %d: %q is not the line the test checks (%q)", block, i+1, l.cmd, s.cmd)
			continue
		}
		line := w.substitute(l.cmd)
		if s.follow {
			line = "timeout --preserve-status -s INT 4 " + line
		}
		deadline := time.Now().Add(s.within)
		for {
			r := w.sh.run(t, line, 2*time.Minute)
			err := s.check(w, r)
			if err == nil && s.follow && r.took < 4*time.Second {
				err = fmt.Errorf("it ended by itself after %s, before Ctrl-C", r.took)
			}
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("README.md, block %s, line %d does not do what it says:\n  %s  # %s\n%v\n%s", block, i+1, l.cmd, l.comment, err, r)
				break
			}
			time.Sleep(time.Second)
		}
	}
}

// substitute fills the placeholders with what earlier lines printed, and
// points what is fixed in the README at this test's own berth and files:
// its gateway port, its temp dir for /tmp, and its cluster for docker
// (other tests share the engine and have instances named hello-1 too).
func (w *walk) substitute(line string) string {
	return strings.NewReplacer(
		"<port>", w.port,
		"<id>", w.id,
		"127.0.0.1:8080", w.b.gwAddr,
		"/tmp/", w.dir+"/tmp/",
		"--filter label=berth.instance=", "--filter label=berth.cluster="+w.b.cluster+" --filter label=berth.instance=",
	).Replace(line)
}

func readReadme(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// wantOutput checks the exit code and that stdout and stderr together hold
// every one of want.
func wantOutput(r lineResult, code int, want ...string) error {
	if r.code != code {
		return fmt.Errorf("exit %d, want %d", r.code, code)
	}
	for _, s := range want {
		if !strings.Contains(r.stdout+r.stderr, s) {
			return fmt.Errorf("the output does not say %q", s)
		}
	}
	return nil
}

// checkPsThree: 3 running instances with the columns the comment names;
// one's port is kept for the curl that follows.
func checkPsThree(w *walk, r lineResult) error {
	cols, rows, err := parseTable(r.stdout, "INSTANCE")
	if err != nil {
		return err
	}
	for _, c := range []string{"STATE", "NODE", "ADDRESS", "AGE", "RESTARTS"} {
		if column(cols, c) < 0 {
			return fmt.Errorf("no column %s", c)
		}
	}
	if len(rows) != 3 {
		return fmt.Errorf("%d instances, want 3", len(rows))
	}
	st, addr := column(cols, "STATE"), column(cols, "ADDRESS")
	for _, row := range rows {
		if len(row) <= addr || row[st] != "running" || !strings.HasPrefix(row[addr], "127.0.0.1:") {
			return fmt.Errorf("an instance that is not running with an address: %q", row)
		}
		if row[0] == "hello-1" {
			_, w.port, _ = strings.Cut(row[addr], ":")
		}
	}
	if w.port == "" {
		return fmt.Errorf("no hello-1")
	}
	return nil
}

// checkRolledOut: the deploy printed its progress and returned once every
// instance runs the new template, healthy.
func checkRolledOut(w *walk, r lineResult) error {
	if err := wantOutput(r, 0, "hello-"); err != nil {
		return err
	}
	var app struct {
		TemplateRevision int64 `json:"template_revision"`
		Spec             struct {
			Replicas int `json:"replicas"`
		} `json:"spec"`
	}
	w.b.getJSON(w.t, "/v1/apps/hello", &app)
	var current []instance
	for _, inst := range w.b.instances(w.t, "hello") {
		if inst.Desired != "stop" {
			current = append(current, inst)
		}
	}
	if len(current) != app.Spec.Replicas || countRoutable(current) != len(current) {
		return fmt.Errorf("when it returned, want %d healthy instances: %s", app.Spec.Replicas, describe(current))
	}
	for _, inst := range current {
		if inst.Revision != app.TemplateRevision {
			return fmt.Errorf("when it returned, %s is of revision %d, not the new %d", inst.Name, inst.Revision, app.TemplateRevision)
		}
	}
	return nil
}
