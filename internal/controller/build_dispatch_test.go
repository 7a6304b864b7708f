package controller

import (
	"fmt"
	"testing"

	"berth/api"
	"berth/internal/store"
)

// A build reserved for builder nodes runs only on a node labelled
// builder=true, even when another node has more room; one that is not
// goes anywhere.
func TestBuildsGoToBuilderNodes(t *testing.T) {
	e := newTaskEnv(t)
	defer e.node("big", 8000, 16<<30)()
	defer e.node("builder", 2000, 4<<30)()
	if _, err := store.Nodes.Update(e.ctx, e.st, "builder", func(n *api.Node) error {
		n.Labels = map[string]string{api.BuilderLabel: "true"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.run(&Tasks{})
	var specs []api.TaskSpec
	for i := range 4 {
		spec := taskSpec(api.BuildQueue, 500)
		spec.Build = &api.BuildSpec{App: "web", Tag: fmt.Sprint(i), Revision: "r", Builders: i < 3}
		specs = append(specs, spec)
	}
	e.submit(specs...)
	e.waitFor("all four builds running", func() (bool, string) {
		running := byState(e.tasks())[api.TaskRunning]
		return len(running) == 4, counts(e.tasks())
	})
	for _, tk := range e.tasks() {
		reserved := tk.Spec.Build.Builders
		if reserved && tk.Node != "builder" {
			t.Errorf("build %s (%s) reserved for builders runs on %s", tk.ID, tk.Spec.Build.Tag, tk.Node)
		}
	}
}
