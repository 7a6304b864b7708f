package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// tickCommand says "start N run R" at once when it starts (no fork before
// it: N counts the runs of its container, R is new each run), then
// "tick R I" five times a second.
const tickCommand = `n=0; read n 2>/dev/null < /tmp/starts; n=$((n+1)); read run < /proc/sys/kernel/random/uuid; ` +
	`echo "start $n run $run"; echo $n > /tmp/starts; ` +
	`i=0; while true; do i=$((i+1)); echo "tick $run $i"; sleep 0.2; done`

// followedLogs is a running `berth logs APP -f` and the lines it printed.
type followedLogs struct {
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	out  []string
}

func (b *berth) followLogs(t *testing.T, app string, args ...string) *followedLogs {
	t.Helper()
	f := &followedLogs{done: make(chan struct{})}
	f.cmd = exec.Command(berthBin, append([]string{"logs", app, "-f"}, args...)...)
	f.cmd.Env = append(cleanEnv(), "BERTH_ADDR="+b.addr, "BERTH_TOKEN="+b.token)
	f.cmd.Dir = t.TempDir()
	stdout, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatalf("start berth logs: %v", err)
	}
	go func() {
		defer close(f.done)
		rd := bufio.NewReader(stdout)
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return // a line cut by the kill is not kept
			}
			f.mu.Lock()
			f.out = append(f.out, strings.TrimSuffix(line, "\n"))
			f.mu.Unlock()
		}
	}()
	t.Cleanup(f.stop)
	return f
}

// stop kills the follow and waits until its output is read.
func (f *followedLogs) stop() {
	_ = f.cmd.Process.Kill()
	<-f.done
	_ = f.cmd.Wait()
}

func (f *followedLogs) lines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.out...)
}

// waitLine waits for a line matching re and returns its submatches.
func (f *followedLogs) waitLine(t *testing.T, what string, re *regexp.Regexp) []string {
	t.Helper()
	var m []string
	waitFor(t, 30*time.Second, func() (bool, string) {
		lines := f.lines()
		for _, l := range lines {
			if m = re.FindStringSubmatch(l); m != nil {
				return true, ""
			}
		}
		return false, fmt.Sprintf("want %s in the follow; it has %d lines, the last: %q", what, len(lines), lines[max(0, len(lines)-5):])
	})
	return m
}

// checkRuns checks that every run in the follow's output was shown whole:
// its start line once, then its ticks 1, 2, 3... each once, in order.
func checkRuns(t *testing.T, lines []string) {
	t.Helper()
	start := regexp.MustCompile(`^(\S+) \| start \d+ run (\S+)$`)
	tick := regexp.MustCompile(`^(\S+) \| tick (\S+) (\d+)$`)
	seen := map[string]bool{}
	next := map[string]int{} // run -> the tick it must print next
	for _, l := range lines {
		if seen[l] {
			t.Errorf("line printed twice: %q", l)
			continue
		}
		seen[l] = true
		if m := start.FindStringSubmatch(l); m != nil {
			next[m[2]] = 1
			continue
		}
		m := tick.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("unexpected line %q", l)
			continue
		}
		i, _ := strconv.Atoi(m[3])
		want, ok := next[m[2]]
		if !ok {
			t.Errorf("%q: its run's start line was not shown before it", l)
			want = i
		}
		if i != want {
			t.Errorf("%q: want tick %d of that run next (a line is missing)", l, want)
		}
		next[m[2]] = i + 1
	}
}

// TestLogsFollowRestartsAndNewInstances: `berth logs -f` goes on through a
// restart of a killed container (showing the new run's first line, and no
// line twice), a container made again after it was removed, and an
// instance added by a scale-up.
func TestLogsFollowRestartsAndNewInstances(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	spec, _ := json.Marshal(map[string]any{
		"name": "flog", "image": imageBusybox, "command": []string{"sh", "-c", tickCommand},
		"replicas": 2, "resources": map[string]any{"cpu": "100m", "memory": "16Mi"}, "stop_grace": "1s",
	})
	b.mustDeploy(t, string(spec), "-d")
	var insts map[string]instance
	waitFor(t, 30*time.Second, func() (bool, string) {
		insts = byName(b.instances(t, "flog"))
		return insts["flog-1"].Status.ContainerID != "" && insts["flog-2"].Status.ContainerID != "", describe(b.instances(t, "flog"))
	})

	f := b.followLogs(t, "flog")
	f.waitLine(t, "flog-1's first line", regexp.MustCompile(`^flog-1 \| start 1 run `))
	f.waitLine(t, "flog-2's first line", regexp.MustCompile(`^flog-2 \| start 1 run `))
	// With --tail 0, only what is new: never a line from before it began.
	f0 := b.followLogs(t, "flog", "--tail", "0")
	f0.waitLine(t, "a tick of flog-2 in the --tail 0 follow", regexp.MustCompile(`^flog-2 \| tick `))

	// Killed: the agent starts the same container again; the follow shows
	// the new run from its first line on.
	if out, err := dockerCLI(30*time.Second, "kill", insts["flog-2"].Status.ContainerID); err != nil {
		t.Fatalf("docker kill: %v: %s", err, out)
	}
	run := f.waitLine(t, "flog-2's second run", regexp.MustCompile(`^flog-2 \| start 2 run (\S+)$`))[1]
	f.waitLine(t, "ticks of flog-2's second run", regexp.MustCompile(`^flog-2 \| tick `+run+` 3$`))
	f0.waitLine(t, "flog-2's second run in the --tail 0 follow", regexp.MustCompile(`^flog-2 \| start 2 run `+run+`$`))
	f0.stop()
	tail0 := f0.lines()
	seen := map[string]bool{}
	for _, l := range tail0 {
		if seen[l] || strings.Contains(l, "| start 1 run") {
			t.Errorf("--tail 0 follow: %q is twice or from before the follow began", l)
		}
		seen[l] = true
	}

	// Removed: the agent makes a new container, whose output is followed too.
	if out, err := dockerCLI(30*time.Second, "rm", "-f", insts["flog-1"].Status.ContainerID); err != nil {
		t.Fatalf("docker rm -f: %v: %s", err, out)
	}
	firstRun := regexp.MustCompile(`^flog-1 \| start 1 run (\S+)$`)
	waitFor(t, 30*time.Second, func() (bool, string) {
		n := 0
		for _, l := range f.lines() {
			if firstRun.MatchString(l) {
				n++
			}
		}
		return n == 2, fmt.Sprintf("want the first line of flog-1's new container: %d start lines of flog-1", n)
	})

	// Scaled up: the new instance's output is followed from its start.
	if r := b.cli(t, "scale", "flog", "3", "-d"); r.code != 0 {
		t.Fatalf("scale: %s", r)
	}
	run = f.waitLine(t, "flog-3's first line", regexp.MustCompile(`^flog-3 \| start 1 run (\S+)$`))[1]
	f.waitLine(t, "ticks of flog-3", regexp.MustCompile(`^flog-3 \| tick `+run+` 3$`))

	f.stop()
	lines := f.lines()
	checkRuns(t, lines)
	if t.Failed() {
		t.Logf("the follow's output:\n%s", strings.Join(lines, "\n"))
	}
}

// TestLogsOfATaskPointsToTaskLogs: `berth logs` given a task's id says
// that it is a task and which verb shows its output.
func TestLogsOfATaskPointsToTaskLogs(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)
	tk := b.submit(t, map[string]any{"image": imageBusybox, "command": []string{"echo", "done"}})
	r := b.cli(t, "logs", tk.ID)
	if want := tk.ID + " is a task, not an app: use berth task logs " + tk.ID; r.code == 0 || !strings.Contains(r.stderr, want) {
		t.Errorf("berth logs <task id>: want a failure saying %q: %s", want, r)
	}
	// The shape of a task id, but no such task: still a hint.
	r = b.cli(t, "logs", "0000000000000000")
	if r.code == 0 || !strings.Contains(r.stderr, "no app named 0000000000000000") || !strings.Contains(r.stderr, "berth task logs") {
		t.Errorf("berth logs <unknown task id>: want a failure naming the app and hinting at berth task logs: %s", r)
	}
	r = b.cli(t, "logs", "nosuch")
	if r.code == 0 || strings.Contains(r.stderr, "task") {
		t.Errorf("berth logs nosuch: want a failure that does not speak of tasks: %s", r)
	}
	b.waitTerminal(t, tk.ID, 30*time.Second)
}
