package apiserver

import (
	"net/http"
	"strings"
	"testing"

	"berth/api"
	"berth/internal/store"
)

// A spec that names replicas sets them; one that omits them keeps the
// stored number (a new app gets 1). The deployed event says which.
func TestPutAppReplicasFromTheSpecOrKept(t *testing.T) {
	hs, st := newServer(t)
	put := func(spec string) {
		t.Helper()
		if code, e := call(t, "PUT", hs.URL+"/v1/apps/web", "secret", "application/yaml", spec); code != http.StatusOK && code != http.StatusCreated {
			t.Fatalf("PUT %q: %d %+v", spec, code, e)
		}
	}
	replicas := func() int {
		t.Helper()
		a, err := store.Apps.Get(t.Context(), st, "web")
		if err != nil {
			t.Fatal(err)
		}
		return a.Spec.ReplicaCount()
	}
	lastDeployed := func() string {
		t.Helper()
		evs, _, err := store.Events.List(t.Context(), st)
		if err != nil {
			t.Fatal(err)
		}
		msg := ""
		for _, e := range evs {
			if e.Kind == "deployed" {
				msg = e.Message
			}
		}
		return msg
	}

	put("name: web\nimage: img:1\n")
	if n := replicas(); n != api.DefaultReplicas {
		t.Fatalf("a new app without replicas has %d, want %d", n, api.DefaultReplicas)
	}
	if code, e := call(t, "POST", hs.URL+"/v1/apps/web/scale", "secret", "application/json", `{"replicas": 5}`); code != http.StatusOK {
		t.Fatalf("scale: %d %+v", code, e)
	}

	put("name: web\nimage: img:2\n") // no replicas: the 5 stay
	if n := replicas(); n != 5 {
		t.Errorf("after a spec without replicas: %d replicas, want the 5 scaled to", n)
	}
	if msg := lastDeployed(); !strings.Contains(msg, "5 replicas (kept: the spec names none)") {
		t.Errorf("deployed event %q, want it to say the 5 replicas were kept", msg)
	}

	put("name: web\nimage: img:3\nreplicas: 3\n")
	if n := replicas(); n != 3 {
		t.Errorf("after a spec of 3 replicas: %d", n)
	}
	if msg := lastDeployed(); !strings.Contains(msg, "replicas 5 -> 3, from the spec") {
		t.Errorf("deployed event %q, want replicas 5 -> 3, from the spec", msg)
	}

	// The same spec without replicas again is no change at all.
	a, _ := store.Apps.Get(t.Context(), st, "web")
	put("name: web\nimage: img:3\n")
	if b, _ := store.Apps.Get(t.Context(), st, "web"); b.Revision != a.Revision || b.Spec.ReplicaCount() != 3 {
		t.Errorf("an unchanged spec without replicas: revision %d -> %d, %d replicas", a.Revision, b.Revision, b.Spec.ReplicaCount())
	}
}
