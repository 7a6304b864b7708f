package main

import (
	"encoding/json"
	"time"

	"berth/api"
)

// cpuReference times a fixed piece of work on one CPU, of the kind the
// queue does most (JSON round trips of a task record): this VM's CPUs are
// not always equally fast, and a reader of the figures should be able to
// tell.
func cpuReference() time.Duration {
	now := time.Now().UTC()
	spec := api.TaskSpec{Image: benchImage, Command: []string{"true"}}
	spec.Default()
	task := api.Task{ID: api.NewTaskID(now), Spec: spec, State: api.TaskSucceeded, Created: now, Updated: now, Ended: now,
		Attempts: []api.Attempt{{N: 1, Node: "bench", Container: "berth-bench-task", State: api.TaskSucceeded, Created: now, Started: now, Ended: now}}}
	t0 := time.Now()
	for range 20000 {
		b, _ := json.Marshal(task)
		var back api.Task
		_ = json.Unmarshal(b, &back)
	}
	return time.Since(t0)
}
