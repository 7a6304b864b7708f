package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"berth/api"
	"berth/internal/runtime"
	"berth/internal/store"
	"berth/internal/tasks"
)

// taskScript makes the fake runtime's task containers act out their
// command: "exit CODE [LINE...]" prints the lines and exits with CODE
// soon; "forever [LINE...]" prints the lines and runs until stopped.
func taskScript(spec runtime.ContainerSpec) (int, time.Duration, []string, bool) {
	if spec.Labels[runtime.LabelTask] == "" || len(spec.Command) == 0 {
		return 0, 0, nil, false
	}
	switch spec.Command[0] {
	case "exit":
		code, _ := strconv.Atoi(spec.Command[1])
		return code, 20 * time.Millisecond, spec.Command[2:], true
	case "forever":
		return 0, 0, spec.Command[1:], false
	}
	return 0, 0, nil, false
}

func newTaskCluster(t *testing.T) *cluster {
	c := newCluster(t)
	c.rt.SetRun(taskScript)
	return c
}

func taskSpec(cmd ...string) api.TaskSpec {
	return api.TaskSpec{Image: "img:1", Command: cmd}
}

func (c *cluster) submit(spec api.TaskSpec) api.Task {
	c.t.Helper()
	task, err := c.client.SubmitTask(c.ctx, spec)
	if err != nil {
		c.t.Fatal(err)
	}
	return task
}

func (c *cluster) task(id string) api.Task {
	c.t.Helper()
	task, err := c.client.GetTask(c.ctx, id)
	if err != nil {
		c.t.Fatal(err)
	}
	return task
}

func (c *cluster) waitTask(id, what string, cond func(api.Task) bool) api.Task {
	c.t.Helper()
	var task api.Task
	c.waitFor(what, func() (bool, string) {
		task = c.task(id)
		return cond(task), describeTask(task)
	})
	return task
}

func (c *cluster) waitEnded(id string) api.Task {
	c.t.Helper()
	return c.waitTask(id, "task "+id+" ended", func(t api.Task) bool { return api.TaskTerminal(t.State) })
}

// waitRunning waits until the task's current attempt runs, and returns
// its container.
func (c *cluster) waitRunning(id string) (api.Task, runtime.Container) {
	c.t.Helper()
	task := c.waitTask(id, "task "+id+" running", func(t api.Task) bool {
		a := t.Current()
		return t.State == api.TaskRunning && a != nil && a.State == api.TaskRunning && a.ContainerID != ""
	})
	ct, err := c.rt.Inspect(c.ctx, task.Current().ContainerID)
	if err != nil || !ct.Running {
		c.t.Fatalf("container of a running attempt: %+v, %v", ct, err)
	}
	return task, ct
}

func describeTask(t api.Task) string {
	s := fmt.Sprintf("state %s, error %q", t.State, t.Error)
	for _, a := range t.Attempts {
		s += fmt.Sprintf("; attempt %d on %s: %s %q", a.N, a.Node, a.State, a.Error)
	}
	return s
}

// taskContainers lists the containers of a task (any attempt).
func (c *cluster) taskContainers(id string) []runtime.Container {
	c.t.Helper()
	list, err := c.rt.List(c.ctx, map[string]string{runtime.LabelTask: id})
	if err != nil {
		c.t.Fatal(err)
	}
	return list
}

func (c *cluster) waitNoContainers(id string) {
	c.t.Helper()
	c.waitFor("containers of "+id+" removed", func() (bool, string) {
		n := len(c.taskContainers(id))
		return n == 0, fmt.Sprintf("%d containers", n)
	})
}

func (c *cluster) taskLog(id string, attempt int) string {
	c.t.Helper()
	rc, err := c.client.TaskLogs(c.ctx, id, attempt, false)
	if err != nil {
		c.t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		c.t.Fatal(err)
	}
	return string(b)
}

func TestTaskSucceedsWithLogsAndContainerRemoved(t *testing.T) {
	c := newTaskCluster(t)
	task := c.submit(taskSpec("exit", "0", "hello", "world"))
	task = c.waitEnded(task.ID)
	a := task.Current()
	if task.State != api.TaskSucceeded || len(task.Attempts) != 1 || a.ExitCode == nil || *a.ExitCode != 0 ||
		a.State != api.TaskSucceeded || a.Node != "n1" || a.ContainerID == "" || a.Started.IsZero() || a.Ended.IsZero() {
		t.Fatalf("task = %+v", task)
	}
	if got := c.taskLog(task.ID, 1); got != "hello\nworld\n" {
		t.Fatalf("log = %q", got)
	}
	if a.LogBytes != int64(len("hello\nworld\n")) || a.LogTruncated {
		t.Fatalf("attempt log bytes %d, truncated %v", a.LogBytes, a.LogTruncated)
	}
	c.waitNoContainers(task.ID)
}

func TestTaskFailsWithExitCodeAfterRetries(t *testing.T) {
	c := newTaskCluster(t)
	spec := taskSpec("exit", "3", "boom")
	spec.Retries = 1
	task := c.submit(spec)
	task = c.waitEnded(task.ID)
	if task.State != api.TaskFailed || task.ExitCode == nil || *task.ExitCode != 3 || len(task.Attempts) != 2 ||
		task.UserFailures != 2 || task.Error != "exited with code 3" {
		t.Fatalf("task = %+v (%s)", task, describeTask(task))
	}
	for _, a := range task.Attempts {
		if a.State != api.TaskFailed || a.Platform || a.Error != "exited with code 3" {
			t.Errorf("attempt %+v", a)
		}
	}
	if task.Attempts[0].Container == task.Attempts[1].Container {
		t.Errorf("two attempts shared container %s", task.Attempts[0].Container)
	}
	if got := c.taskLog(task.ID, 1); got != "boom\n" {
		t.Errorf("log of attempt 1 = %q", got)
	}
	c.waitNoContainers(task.ID)
}

func TestTaskTimesOut(t *testing.T) {
	c := newTaskCluster(t)
	spec := taskSpec("forever", "working")
	spec.Timeout = ptrTo(api.Duration(300 * time.Millisecond))
	task := c.submit(spec)
	task = c.waitEnded(task.ID)
	a := task.Current()
	if task.State != api.TaskTimedOut || a.State != api.TaskTimedOut || a.Error != "timed out after 300ms" ||
		task.Error != "timed out after 300ms" || a.ExitCode == nil || *a.ExitCode != 143 {
		t.Fatalf("task = %+v (%s)", task, describeTask(task))
	}
	if got := c.taskLog(task.ID, 1); got != "working\n" {
		t.Errorf("log = %q", got)
	}
	c.waitNoContainers(task.ID)
}

func TestCancelRunningTask(t *testing.T) {
	c := newTaskCluster(t)
	task := c.submit(taskSpec("forever"))
	c.waitRunning(task.ID)
	if _, err := c.client.CancelTask(c.ctx, task.ID); err != nil {
		t.Fatal(err)
	}
	task = c.waitEnded(task.ID)
	if task.State != api.TaskCancelled || task.Current().State != api.TaskCancelled || len(task.Attempts) != 1 {
		t.Fatalf("task = %+v (%s)", task, describeTask(task))
	}
	c.waitNoContainers(task.ID)
}

func TestMissingImageFailsTaskAtOnce(t *testing.T) {
	c := newTaskCluster(t)
	c.rt.SetImages("img:1")
	spec := taskSpec("exit", "0")
	spec.Image = "img:404"
	spec.Retries = 3
	task := c.waitEnded(c.submit(spec).ID)
	want := "image img:404 is not present and could not be pulled"
	if task.State != api.TaskFailed || task.Error != want || len(task.Attempts) != 1 {
		t.Fatalf("task = %+v (%s)", task, describeTask(task))
	}
}

func TestPayloadMountedAndEnvSet(t *testing.T) {
	c := newTaskCluster(t)
	type seen struct {
		spec    runtime.ContainerSpec
		payload string
	}
	var mu sync.Mutex
	var got []seen
	c.rt.SetRun(func(spec runtime.ContainerSpec) (int, time.Duration, []string, bool) {
		if spec.Labels[runtime.LabelTask] != "" {
			s := seen{spec: spec}
			if len(spec.Mounts) == 1 {
				b, _ := os.ReadFile(spec.Mounts[0].Source)
				s.payload = string(b)
			}
			mu.Lock()
			got = append(got, s)
			mu.Unlock()
		}
		return 0, 10 * time.Millisecond, nil, true
	})
	spec := taskSpec("exit", "0")
	spec.Payload = []byte(`{"job": 42}`)
	spec.Env = map[string]string{"K": "V"}
	spec.Resources = api.Resources{CPU: 250, Memory: 64 << 20}
	task := c.waitEnded(c.submit(spec).ID)
	if task.State != api.TaskSucceeded {
		t.Fatalf("task = %s", describeTask(task))
	}
	plain := c.waitEnded(c.submit(taskSpec("exit", "0")).ID)

	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("%d task containers started, want 2", len(got))
	}
	s := got[0]
	env, m := s.spec.Env, s.spec.Mounts
	if env["BERTH_TASK_ID"] != task.ID || env["BERTH_ATTEMPT"] != "1" || env["BERTH_PAYLOAD"] != "/task/payload" || env["K"] != "V" {
		t.Errorf("env = %v", env)
	}
	if len(m) != 1 || m[0].Target != "/task/payload" || !m[0].ReadOnly || s.payload != `{"job": 42}` {
		t.Errorf("mounts = %+v, payload %q", m, s.payload)
	}
	if s.spec.NanoCPUs != 250_000_000 || s.spec.MemoryBytes != 64<<20 || !s.spec.Init || s.spec.Port != 0 ||
		s.spec.Name != task.Current().Container || s.spec.Labels[runtime.LabelAttempt] != "1" ||
		s.spec.Labels[runtime.LabelCluster] != "c0ffee" || s.spec.Labels[runtime.LabelNode] != "n1" {
		t.Errorf("spec = %+v", s.spec)
	}
	if _, err := os.Stat(m[0].Source); !os.IsNotExist(err) {
		t.Errorf("payload file left after the attempt: %v", err)
	}
	if p := got[1].spec; len(p.Mounts) != 0 || p.Env["BERTH_PAYLOAD"] != "" || p.Env["BERTH_TASK_ID"] != plain.ID {
		t.Errorf("task without payload: env %v, mounts %v", p.Env, p.Mounts)
	}
}

func TestAgentRestartAdoptsTaskContainer(t *testing.T) {
	c := newTaskCluster(t)
	task := c.submit(taskSpec("forever"))
	_, before := c.waitRunning(task.ID)
	c.stopAg()
	c.startAgent()
	time.Sleep(time.Second) // let the new agent list, adopt and sweep
	if list := c.taskContainers(task.ID); len(list) != 1 || list[0].ID != before.ID || !list[0].Running {
		t.Fatalf("containers after restart = %+v, want the same one running", list)
	}
	c.rt.Kill(before.ID, 0)
	task = c.waitEnded(task.ID)
	if task.State != api.TaskSucceeded || len(task.Attempts) != 1 || task.Current().ContainerID != before.ID {
		t.Fatalf("task = %+v (%s)", task, describeTask(task))
	}
	c.waitNoContainers(task.ID)
}

func TestContainerGoneDuringRestartIsRetriedAsLost(t *testing.T) {
	c := newTaskCluster(t)
	spec := taskSpec("forever")
	spec.Retries = 0 // a platform loss must not need one
	task := c.submit(spec)
	_, ct := c.waitRunning(task.ID)
	c.stopAg()
	c.rt.Remove(c.ctx, ct.ID)
	c.startAgent()
	task = c.waitTask(task.ID, "a second attempt running", func(t api.Task) bool {
		return len(t.Attempts) == 2 && t.Current().State == api.TaskRunning
	})
	first := task.Attempts[0]
	if len(task.Attempts) != 2 || first.State != api.AttemptLost || !first.Platform || task.UserFailures != 0 {
		t.Fatalf("task = %+v (%s)", task, describeTask(task))
	}
}

func TestStrayTaskContainersRemoved(t *testing.T) {
	c := newTaskCluster(t)
	c.deploy(spec("web", 1))
	c.waitHealthy("web", 1)
	app := c.rt.Running()[0]
	running := c.submit(taskSpec("forever"))
	_, keep := c.waitRunning(running.ID)
	ended := c.waitEnded(c.submit(taskSpec("exit", "0")).ID)

	c.stopAg()
	labels := func(id, n string) map[string]string {
		return map[string]string{runtime.LabelCluster: "c0ffee", runtime.LabelNode: "n1", runtime.LabelTask: id, runtime.LabelAttempt: n}
	}
	var strays []string
	for i, l := range []map[string]string{
		labels(ended.ID, "1"),   // an ended task's
		labels(running.ID, "7"), // an attempt that is not the current one
		labels("0000000000000000", "1"),
	} {
		id, err := c.rt.Create(c.ctx, runtime.ContainerSpec{Name: fmt.Sprintf("stray-%d", i), Image: "img:1", Labels: l})
		if err != nil {
			t.Fatal(err)
		}
		c.rt.Start(c.ctx, id)
		strays = append(strays, id)
	}
	os.MkdirAll(c.payloadDir+"/"+ended.ID+".1", 0o700)
	c.startAgent()
	c.waitFor("strays removed", func() (bool, string) {
		left := 0
		for _, id := range strays {
			if _, err := c.rt.Inspect(c.ctx, id); err == nil {
				left++
			}
		}
		return left == 0, fmt.Sprintf("%d strays left", left)
	})
	if got, err := c.rt.Inspect(c.ctx, keep.ID); err != nil || !got.Running {
		t.Fatalf("the running task's container: %+v, %v", got, err)
	}
	// The app's container is not a task's stray, nor the reverse.
	if got, err := c.rt.Inspect(c.ctx, app.ID); err != nil || !got.Running {
		t.Fatalf("the app's container: %+v, %v", got, err)
	}
	if insts := c.instances("web"); len(insts) != 1 || insts[0].Status.ContainerID != app.ID {
		t.Fatalf("instances = %+v", insts)
	}
	if _, err := os.Stat(c.payloadDir + "/" + ended.ID + ".1"); !os.IsNotExist(err) {
		t.Errorf("stray payload directory kept: %v", err)
	}
}

func TestTaskLogCappedAt1MiB(t *testing.T) {
	c := newTaskCluster(t)
	line := strings.Repeat("x", 1023)
	lines := make([]string, 1100) // 1100 KiB
	for i := range lines {
		lines[i] = line
	}
	task := c.waitEnded(c.submit(taskSpec(append([]string{"exit", "0"}, lines...)...)).ID)
	a := task.Current()
	log := c.taskLog(task.ID, 1)
	want := strings.Repeat(line+"\n", 1024) + cutNote
	if log != want {
		t.Fatalf("log of %d bytes ends %q, want %d bytes ending with the cut note", len(log), log[max(0, len(log)-60):], len(want))
	}
	if !a.LogTruncated || a.LogBytes != int64(len(want)) {
		t.Fatalf("attempt log bytes %d, truncated %v", a.LogBytes, a.LogTruncated)
	}
}

func TestRunningTaskLogUploadedLive(t *testing.T) {
	c := newTaskCluster(t)
	task := c.submit(taskSpec("forever", "first"))
	_, ct := c.waitRunning(task.ID)
	c.waitFor("first line uploaded", func() (bool, string) {
		got := c.taskLog(task.ID, 1)
		return got == "first\n", fmt.Sprintf("log %q", got)
	})
	c.rt.Log(ct.ID, "second")
	c.waitFor("second line uploaded", func() (bool, string) {
		got := c.taskLog(task.ID, 1)
		return got == "first\nsecond\n", fmt.Sprintf("log %q", got)
	})
	c.rt.Log(ct.ID, "last")
	c.rt.Kill(ct.ID, 0)
	c.waitEnded(task.ID)
	if got := c.taskLog(task.ID, 1); got != "first\nsecond\nlast\n" {
		t.Fatalf("final log = %q", got)
	}
}

func TestManyShortTasks(t *testing.T) {
	c := newTaskCluster(t)
	specs := make([]api.TaskSpec, 200)
	for i := range specs {
		specs[i] = taskSpec("exit", strconv.Itoa(i%2), fmt.Sprintf("task %d", i))
	}
	l, err := c.client.SubmitTasks(c.ctx, specs)
	if err != nil {
		t.Fatal(err)
	}
	for i, task := range l.Items {
		task = c.waitEnded(task.ID)
		want := api.TaskSucceeded
		if i%2 == 1 {
			want = api.TaskFailed
		}
		if task.State != want || len(task.Attempts) != 1 {
			t.Fatalf("task %d: %s", i, describeTask(task))
		}
	}
	if got := c.taskLog(l.Items[7].ID, 1); got != "task 7\n" {
		t.Fatalf("log of task 7 = %q", got)
	}
	c.waitFor("all task containers removed", func() (bool, string) {
		left, _ := c.rt.List(c.ctx, map[string]string{runtime.LabelCluster: "c0ffee"})
		return len(left) == 0, fmt.Sprintf("%d left", len(left))
	})
}

func ptrTo[T any](v T) *T { return &v }

func TestAttemptMovedAwayIsStopped(t *testing.T) {
	defer func(d time.Duration) { taskRecheckEvery = d }(taskRecheckEvery)
	taskRecheckEvery = 200 * time.Millisecond
	c := newTaskCluster(t)
	task := c.submit(taskSpec("forever"))
	_, first := c.waitRunning(task.ID)
	// The server gives the attempt up (as when it thinks the node is lost)
	// and, with no platform retry left, the task; the watch of this node's
	// tasks does not show that, as the task is on no node any more.
	if _, err := store.Tasks.Update(c.ctx, c.st, task.ID, func(t *api.Task) error {
		t.PlatformFailures = tasks.MaxPlatformFailures - 1
		return tasks.Lose(t, "test: node lost", time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the given-up attempt's container removed", func() (bool, string) {
		_, err := c.rt.Inspect(c.ctx, first.ID)
		return errors.Is(err, runtime.ErrNotFound), fmt.Sprintf("inspect: %v", err)
	})
	if task = c.task(task.ID); task.State != api.TaskFailed || len(task.Attempts) != 1 {
		t.Fatalf("task = %s", describeTask(task))
	}
}
