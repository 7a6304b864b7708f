package agent

import (
	"errors"
	"strings"
	"testing"

	"berth/api"
	"berth/internal/runtime"
)

// A container configuration the engine refuses (Docker's 400) is refused
// again on every attempt: the task fails at once with the engine's words,
// not retried as a platform failure.
func TestEngineRefusedConfigFailsTaskAtOnce(t *testing.T) {
	c := newTaskCluster(t)
	c.rt.SetRefuse(func(spec runtime.ContainerSpec) error {
		if spec.MemoryBytes < 6<<20 { // as Docker does
			return errors.New("Error response from daemon: Minimum memory limit allowed is 6MB")
		}
		return nil
	})
	spec := taskSpec("exit", "0")
	spec.Retries = 3
	spec.Resources.Memory = 4 << 20
	task := c.waitEnded(c.submit(spec).ID)
	want := "the engine refused the container's configuration: Minimum memory limit allowed is 6MB"
	if task.State != api.TaskFailed || task.Error != want || len(task.Attempts) != 1 {
		t.Fatalf("task = %+v (%s)", task, describeTask(task))
	}
	a := task.Current()
	if a.Platform || task.PlatformFailures != 0 || !strings.Contains(a.Error, "Minimum memory limit") {
		t.Fatalf("attempt = %+v, platform failures %d", a, task.PlatformFailures)
	}
	c.waitNoContainers(task.ID)
}

func TestEngineMessage(t *testing.T) {
	for _, c := range []struct{ err, want string }{
		{"create berth-c0ffee-task-x.1: the engine refused the container's configuration: Error response from daemon: invalid mount path: 'a' mount path must be absolute",
			"invalid mount path: 'a' mount path must be absolute"},
		{"something else", "something else"},
	} {
		if got := engineMessage(errString(c.err)); got != c.want {
			t.Errorf("engineMessage(%q) = %q, want %q", c.err, got, c.want)
		}
	}
}

type errString string

func (e errString) Error() string { return string(e) }
