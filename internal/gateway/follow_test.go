package gateway

import (
	"testing"
	"time"

	"berth/api"
)

func TestBuildRoutes(t *testing.T) {
	zero, five := api.Duration(0), api.Duration(5*time.Second)
	apps := map[string]api.App{
		"web":  {Spec: api.AppSpec{Name: "web", Routes: []string{"web.test"}, RequestTimeout: &zero}},
		"idle": {Spec: api.AppSpec{Name: "idle", Routes: []string{"idle.test"}, RequestTimeout: &five, Idle: &api.Idle{StopAfter: five}}, Idled: true},
		"bare": {Spec: api.AppSpec{Name: "bare"}},
		"gone": {Spec: api.AppSpec{Name: "gone", Routes: []string{"gone.test"}}, Deleting: true},
	}
	ready := func(app, node, addr, caddr string) api.Instance {
		return api.Instance{App: app, Node: node, Desired: api.DesiredRun,
			Status: api.Status{State: api.StateRunning, Healthy: true, Address: addr, ContainerAddress: caddr}}
	}
	insts := map[string]api.Instance{
		"web-1": ready("web", "n1", "10.0.0.1:3001", "172.17.0.2:8080"),
		"web-2": ready("web", "n2", "10.0.0.2:3002", "172.18.0.2:8080"),
		"web-3": {App: "web", Node: "n1", Desired: api.DesiredRun, Status: api.Status{State: api.StateStarting, Address: "10.0.0.1:3003"}},
	}
	got := BuildRoutes(apps, insts, "n1")
	if len(got) != 2 || got[0].App != "idle" || got[1].App != "web" {
		t.Fatalf("routes for %+v, want idle and web only", got)
	}
	idle, web := got[0], got[1]
	if !idle.IdleEnabled || !idle.Idle || idle.Timeout != 5*time.Second || len(idle.Upstreams) != 0 {
		t.Errorf("idle app: %+v", idle)
	}
	// On its own node the gateway dials the container; elsewhere the node's
	// published port. A starting instance gets no traffic.
	want := []string{"10.0.0.2:3002", "172.17.0.2:8080"}
	if len(web.Upstreams) != 2 || web.Upstreams[0] != want[0] || web.Upstreams[1] != want[1] {
		t.Errorf("web upstreams %v, want %v", web.Upstreams, want)
	}
	if web.Timeout >= 0 {
		t.Errorf("request_timeout 0s gave Timeout %s, want negative (none)", web.Timeout)
	}
}
