package apiserver

import (
	"net/http"
	"strings"
	"testing"

	"berth/api"
	"berth/internal/store"
)

// Every accepted change is a revision with its spec, summary and author;
// a rollback is a new revision copied from the old one; a bad revision's
// template is refused without force; bad input changes nothing.
func TestRevisionsAndRollback(t *testing.T) {
	hs, st := newServer(t)
	ctx := t.Context()
	must := func(method, path, ct, body string, want int) {
		t.Helper()
		if code, e := call(t, method, hs.URL+path, "secret", ct, body); code != want {
			t.Fatalf("%s %s %s: %d %+v, want %d", method, path, body, code, e, want)
		}
	}
	history := func() []api.Revision {
		t.Helper()
		h, err := store.Revisions.ListUnder(ctx, st, "web/")
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	must("PUT", "/v1/apps/web", "application/yaml", "name: web\nimage: img:1\n", http.StatusCreated)
	must("PUT", "/v1/apps/web", "application/yaml", "name: web\nimage: img:2\nenv: {A: b}\n", http.StatusOK)
	must("POST", "/v1/apps/web/scale", "application/json", `{"replicas": 3}`, http.StatusOK)
	must("PUT", "/v1/apps/web", "application/yaml", "name: web\nimage: img:2\nenv: {A: b}\n", http.StatusOK) // unchanged: no revision
	h := history()
	if len(h) != 3 {
		t.Fatalf("history has %d revisions, want 3: %+v", len(h), h)
	}
	for i, want := range []string{"created: img:1", "image img:1 -> img:2, env", "scale: replicas 1 -> 3"} {
		if h[i].Revision != int64(i+1) || h[i].Change != want || h[i].By != "bootstrap token" || h[i].Outcome != api.OutcomeRollingOut {
			t.Errorf("revision %d: %+v; want change %q by the bootstrap token", i+1, h[i], want)
		}
	}
	if h[2].Template != 2 {
		t.Errorf("a scale runs the template of revision 2, not %d", h[2].Template)
	}

	// Bad input: nothing changes.
	for _, c := range []struct {
		body string
		code int
		want string
	}{
		{`{"revision": 9}`, http.StatusNotFound, "web has no revision 9"},
		{`{"revision": -1}`, http.StatusBadRequest, "not a revision number"},
		{`{"revision": 3}`, http.StatusConflict, "runs revision 3 already"},
		{`{}`, http.StatusConflict, "no earlier revision that rolled out"},
		{`{"revision": "x"}`, http.StatusBadRequest, "revision"},
	} {
		code, e := call(t, "POST", hs.URL+"/v1/apps/web/rollback", "secret", "application/json", c.body)
		if code != c.code || !strings.Contains(e.Error, c.want) {
			t.Errorf("rollback %s: %d %q, want %d with %q", c.body, code, e.Error, c.code, c.want)
		}
	}
	if len(history()) != 3 {
		t.Fatalf("refused rollbacks wrote revisions")
	}

	// Revision 1 rolled out, revision 3 is current: the default goes to 1.
	r1 := h[0]
	r1.Outcome = api.OutcomeRolledOut
	if _, err := st.Txn(ctx, store.Revisions.Put(api.RevisionKey("web", 1), r1, r1.Version)); err != nil {
		t.Fatal(err)
	}
	must("POST", "/v1/apps/web/rollback", "application/json", `{}`, http.StatusOK)
	app, err := store.Apps.Get(ctx, st, "web")
	if err != nil {
		t.Fatal(err)
	}
	// Template 1 again: the instances of revision 1 still running stay.
	if app.Revision != 4 || app.Spec.Image != "img:1" || app.TemplateRevision != 1 || app.Spec.ReplicaCount() != 1 {
		t.Errorf("after the rollback: revision %d template %d image %s replicas %d; want 4, 1, img:1, 1",
			app.Revision, app.TemplateRevision, app.Spec.Image, app.Spec.ReplicaCount())
	}
	h = history()
	if len(h) != 4 || h[3].RollbackOf != 1 || h[3].Change != "rollback to revision 1" || h[2].Outcome != api.OutcomeRolledBack {
		t.Errorf("history after the rollback: %+v", h)
	}

	// Revision 2's template reverted as bad: deploying it again needs force.
	r2 := h[1]
	r2.Outcome, r2.Bad, r2.Reason = api.OutcomeReverted, true, "never healthy"
	if _, err := st.Txn(ctx, store.Revisions.Put(api.RevisionKey("web", 2), r2, r2.Version)); err != nil {
		t.Fatal(err)
	}
	code, e := call(t, "PUT", hs.URL+"/v1/apps/web", "secret", "application/yaml", "name: web\nimage: img:2\nenv: {A: b}\nreplicas: 2\n")
	if code != http.StatusConflict || !strings.Contains(e.Error, "revision 2, which was reverted as bad (never healthy)") || !strings.Contains(e.Error, "--force") {
		t.Errorf("deploying a bad revision's template: %d %q", code, e.Error)
	}
	must("PUT", "/v1/apps/web?force=true", "application/yaml", "name: web\nimage: img:2\nenv: {A: b}\nreplicas: 2\n", http.StatusOK)
	must("GET", "/v1/apps/web/revisions/5", "", "", http.StatusOK)
	must("GET", "/v1/apps/web/revisions/x", "", "", http.StatusBadRequest)
	if code, e := call(t, "GET", hs.URL+"/v1/apps/nope/revisions", "secret", "", ""); code != http.StatusNotFound || !strings.Contains(e.Error, "no app named nope") {
		t.Errorf("revisions of an unknown app: %d %q", code, e.Error)
	}
	if code, _ := call(t, "POST", hs.URL+"/v1/apps/web/rollback", "secret", "application/json", `{"revision": 2, "x": 1}`); code != http.StatusBadRequest {
		t.Errorf("rollback with an unknown field: %d", code)
	}
}
