package apiserver

import (
	"context"
	"net/http"
	"testing"

	"berth/api"
	"berth/internal/store"
)

// A canary is started by a deploy that changes the template; bad canary
// input is refused naming the field, and nothing is stored; promote,
// abort, pause and resume need a rollout in the right state.
func TestCanaryRequests(t *testing.T) {
	hs, st := newServer(t)
	ctx := context.Background()
	put := func(query, body string) (int, api.Error) {
		return call(t, "PUT", hs.URL+"/v1/apps/web"+query, "secret", "application/yaml", body)
	}
	post := func(action string) (int, api.Error) {
		return call(t, "POST", hs.URL+"/v1/apps/web/rollout/"+action, "secret", "application/json", "")
	}
	v1 := "name: web\nimage: img:1\nreplicas: 3\n"
	v2 := "name: web\nimage: img:2\nreplicas: 3\n"
	code, e := put("?canary=10%25", v1)
	want(t, "a canary of an app that does not exist", code, e, http.StatusBadRequest, "no stable revision")
	if code, e := put("", v1); code != http.StatusCreated {
		t.Fatalf("create: %d %+v", code, e)
	}
	for _, c := range []struct {
		query, body, field, msg string
	}{
		{"?canary=150%25", v2, "canary", "between 0% and 100%"},
		{"?canary=abc", v2, "canary", "want a share of traffic like 10% or a number of instances"},
		{"?canary=10%", v2, "canary", "written %25"},
		{"?canary=5", v2, "canary", "5 canary instances for 3 replicas"},
		{"?canary=10%25", v1 + "env: {}\n", "canary", "nothing to try as a canary"},
		{"", v2 + "update: {canary: {weight: 120%}}\n", "update.canary.weight", "between 0% and 100%"},
		{"", v2 + "update: {canary: {instances: 4}}\n", "update.canary.instances", "at most as large as the app"},
		{"", v2 + "update: {canary: {duration: 48h}}\n", "update.canary.duration", "between 0s and 24h"},
	} {
		code, e := put(c.query, c.body)
		want(t, "deploy "+c.query+" "+c.body, code, e, http.StatusBadRequest, c.msg)
		if e.Field != c.field {
			t.Errorf("deploy %s: field %q, want %q", c.query, e.Field, c.field)
		}
	}
	if app, _ := store.Apps.Get(ctx, st, "web"); app.Revision != 1 || app.Canary != nil {
		t.Fatalf("refused deploys changed the app: revision %d, canary %+v", app.Revision, app.Canary)
	}
	for _, action := range []string{"promote", "abort"} {
		code, e := post(action)
		want(t, action+" without a canary", code, e, http.StatusConflict, "no canary in progress")
	}
	code, e = post("resume")
	want(t, "resume of a rollout not paused", code, e, http.StatusConflict, "not paused")

	if code, e := put("?canary=20%25", v2); code != http.StatusOK {
		t.Fatalf("deploy --canary 20%%: %d %+v", code, e)
	}
	app, _ := store.Apps.Get(ctx, st, "web")
	if c := app.Canary; c == nil || c.Weight != 2000 || c.Instances != 1 || c.Stable != 1 || c.Revision != 2 || c.PromoteAt.IsZero() ||
		c.StableSpec.Image != "img:1" || app.TemplateRevision != 2 {
		t.Fatalf("the canary: %+v (template %d)", app.Canary, app.TemplateRevision)
	}
	if code, e := post("pause"); code != http.StatusOK {
		t.Fatalf("pause: %d %+v", code, e)
	}
	app, _ = store.Apps.Get(ctx, st, "web")
	if !app.Paused || app.Canary.Left <= 0 || !app.Canary.PromoteAt.IsZero() {
		t.Fatalf("paused: %+v %+v; want the time left kept and no promotion time", app.Paused, app.Canary)
	}
	if code, e := post("resume"); code != http.StatusOK {
		t.Fatalf("resume: %d %+v", code, e)
	}
	if code, e := post("abort"); code != http.StatusOK {
		t.Fatalf("abort: %d %+v", code, e)
	}
	app, _ = store.Apps.Get(ctx, st, "web")
	h, _ := store.Revisions.ListUnder(ctx, st, "web/")
	if app.Canary != nil || app.Revision != 3 || app.TemplateRevision != 1 || app.Spec.Image != "img:1" ||
		len(h) != 3 || h[1].Outcome != api.OutcomeAborted || h[1].Bad || h[2].RollbackOf != 1 {
		t.Fatalf("after the abort: app %+v; history %+v", app, h)
	}
}
