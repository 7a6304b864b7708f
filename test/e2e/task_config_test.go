package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestTaskEngineRefusesConfig: a task whose container the Docker engine
// refuses as configured (here a memory limit below the engine's minimum of
// 6MB, which berth's own validation lets through) fails at once with the
// engine's message: no retry, no attempt counted as the platform's.
func TestTaskEngineRefusesConfig(t *testing.T) {
	t.Parallel()
	b := startTaskBerth(t)

	start := time.Now()
	r := b.cli(t, "run", "--wait", "--retries", "2", "--memory", "4Mi", imageBusybox, "--", "true")
	took := time.Since(start)
	if r.code != 1 || !strings.Contains(r.stderr, "failed after 1 attempt") ||
		!strings.Contains(r.stderr, "Minimum memory limit allowed is 6MB") {
		t.Errorf("berth run --wait --memory 4Mi: want exit 1 and 'failed after 1 attempt: ... Minimum memory limit allowed is 6MB' on stderr:\n%s", r)
	}
	if took > 30*time.Second {
		t.Errorf("berth run --wait took %s: the refused task was retried rather than failed at once", took)
	}
	ts := b.listTasks(t, "")
	if len(ts) != 1 {
		t.Fatalf("want 1 task: %s", describeTasks(ts))
	}
	tk := ts[0]
	if tk.State != "failed" || len(tk.Attempts) != 1 || tk.PlatformFailures != 0 || tk.UserFailures != 0 ||
		tk.Attempts[0].Platform || !strings.Contains(tk.Error, "the engine refused the container's configuration") {
		t.Errorf("want a failed task with one attempt, not the platform's, its error naming the refused configuration: %s", tk)
	}
	show := b.mustCLI(t, "task", "show", tk.ID)
	if !strings.Contains(show.stdout, "Minimum memory limit allowed is 6MB") {
		t.Errorf("berth task show %s does not name the engine's message:\n%s", tk.ID, show.stdout)
	}
	b.waitNoTaskContainer(t, tk)
}
