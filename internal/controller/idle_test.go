package controller

import (
	"testing"
	"time"

	"berth/api"
)

// A woken app is not settled before its instances have started again, and
// its idle clock starts when they are healthy, not at the wake request:
// otherwise a wake slower than stop_after is idled again before it serves.
func TestWokenAppIdlesOnlyAfterItIsBack(t *testing.T) {
	one := 1
	app := api.App{Spec: api.AppSpec{Name: "lazy", Replicas: &one}, TemplateRevision: 1}
	woken := api.Instance{Name: "lazy-1", Revision: 1, Desired: api.DesiredRun, Status: api.Status{State: api.StateIdle}}
	if settled(app, []api.Instance{woken}) {
		t.Errorf("settled while its instance is still idle")
	}
	started := time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC)
	back := woken
	back.Status = api.Status{State: api.StateRunning, Healthy: true, StartedAt: started}
	if !settled(app, []api.Instance{back}) {
		t.Errorf("not settled once running")
	}
	if got := lastHealthyStart([]api.Instance{back}); !got.Equal(started) {
		t.Errorf("lastHealthyStart = %v, want %v", got, started)
	}
	sick := back
	sick.Status.Healthy, sick.Status.State = false, api.StateUnhealthy
	if got := lastHealthyStart([]api.Instance{sick}); !got.IsZero() {
		t.Errorf("lastHealthyStart of an unhealthy instance = %v, want none (a sick app may idle)", got)
	}
}
