package apiserver

import (
	"strings"
	"testing"

	"berth/api"
)

func kinds(evs []api.Event) string {
	var k []string
	for _, e := range evs {
		k = append(k, e.Kind+": "+e.Message)
	}
	return strings.Join(k, " | ")
}

// A crash is told as it happens: "exited" when the container exits (the
// agent counts the restart to come then), "restarted" once it starts again.
func TestStatusEventsExitThenRestart(t *testing.T) {
	code := 137
	inst := api.Instance{Name: "a-1", App: "a", Spec: api.AppSpec{Port: 8080}}
	running := api.Status{State: api.StateRunning, Healthy: true, ContainerID: "c1", Address: "127.0.0.1:5000"}

	inst.Status = api.Status{State: api.StateExited, ContainerID: "c1", Restarts: 1, ExitCode: &code, Error: "exited with code 137; restarting in 1s"}
	got := kinds(StatusEvents(inst, running))
	if want := "exited: exited with code 137; restarting in 1s"; got != want {
		t.Errorf("on exit: %q, want %q", got, want)
	}
	exited := inst.Status

	inst.Status = api.Status{State: api.StateStarting, ContainerID: "c1", Address: "127.0.0.1:5001", Restarts: 1, ExitCode: &code}
	got = kinds(StatusEvents(inst, exited))
	if want := "restarted: restart 1 after exit code 137 at 127.0.0.1:5001"; got != want {
		t.Errorf("on the restart: %q, want %q", got, want)
	}

	// The exit's report was missed: both, exit first.
	got = kinds(StatusEvents(inst, running))
	if !strings.HasPrefix(got, "exited: exit code 137 | restarted: restart 1") {
		t.Errorf("a missed exit: %q, want exited then restarted", got)
	}

	inst.Status.Error = "killed: out of memory (limit 16Mi); restarting in 2s"
	inst.Status.State = api.StateExited
	got = kinds(StatusEvents(inst, running))
	if want := "exited: exit code 137: killed: out of memory (limit 16Mi); restarting in 2s"; got != want {
		t.Errorf("an OOM kill: %q, want %q", got, want)
	}
}

// An instance without a port has no address: the events say nothing of one.
func TestStatusEventsWithoutAddress(t *testing.T) {
	inst := api.Instance{Name: "w-1", App: "w", Status: api.Status{State: api.StateStarting, ContainerID: "0123456789abcdef"}}
	got := kinds(StatusEvents(inst, api.Status{State: api.StatePending}))
	if want := "started: container 0123456789ab"; got != want {
		t.Errorf("started: %q, want %q", got, want)
	}
	old := inst.Status
	inst.Status.State, inst.Status.Healthy = api.StateRunning, true
	got = kinds(StatusEvents(inst, old))
	if strings.Contains(got, " at ") || !strings.HasPrefix(got, "healthy: running") {
		t.Errorf("healthy: %q, want a message without an address", got)
	}
}
