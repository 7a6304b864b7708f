package apiserver

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"berth/api"
	"berth/internal/store"
)

func newServer(t *testing.T) (*httptest.Server, *store.Store) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.OpenEmbedded(context.Background(), t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	hs := httptest.NewServer((&Server{Store: st, Token: "secret", Log: log}).Handler())
	t.Cleanup(hs.Close)
	return hs, st
}

func call(t *testing.T, method, url, token, contentType, body string) (int, api.Error) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.Error
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e
}

// Every route the server has is documented in docs/api.md, and every
// documented route exists.
func TestRoutesAreDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "### ") {
			documented[strings.TrimPrefix(line, "### ")] = true
		}
	}
	served := map[string]bool{"GET /healthz": true}
	for _, rt := range (&Server{}).routes() {
		served[rt.pattern] = true
	}
	for p := range served {
		if !documented[p] {
			t.Errorf("route %q is not documented in docs/api.md (as a '### %s' heading)", p, p)
		}
	}
	for p := range documented {
		if !served[p] {
			t.Errorf("docs/api.md documents %q, which the server does not serve", p)
		}
	}
}

func TestAuth(t *testing.T) {
	hs, _ := newServer(t)
	if code, _ := call(t, "GET", hs.URL+"/healthz", "", "", ""); code != 200 {
		t.Errorf("healthz without token: %d, want 200", code)
	}
	for _, token := range []string{"", "wrong", "secret2"} {
		if code, e := call(t, "GET", hs.URL+"/v1/apps", token, "", ""); code != 401 || e.Error == "" {
			t.Errorf("token %q: %d %+v, want 401 with a JSON error", token, code, e)
		}
	}
	if code, _ := call(t, "GET", hs.URL+"/v1/apps", "secret", "", ""); code != 200 {
		t.Errorf("right token: %d, want 200", code)
	}
}

// Bad specs answer 400 naming the field, and nothing is stored.
func TestBadSpecsStoreNothing(t *testing.T) {
	hs, st := newServer(t)
	yaml := "application/yaml"
	cases := []struct {
		name, ct, body, field string
		code                  int
	}{
		{"malformed yaml", yaml, "name: [x", "", 400},
		{"unknown field", yaml, "name: web\nimage: a\nbogus: 1", "bogus", 400},
		{"not a dns label", yaml, "name: Web_1\nimage: a", "name", 400},
		{"memory too small", yaml, "name: web\nimage: a\nresources: {memory: 1Mi}", "resources.memory", 400},
		{"replicas too many", yaml, "name: web\nimage: a\nreplicas: 1001", "replicas", 400},
		{"replicas negative", "application/json", `{"name":"web","image":"a","replicas":-1}`, "replicas", 400},
		{"bad cpu", yaml, "name: web\nimage: a\nresources: {cpu: abc}", "resources.cpu", 400},
		{"bad duration", yaml, "name: web\nimage: a\nport: 80\nhealth: {tcp: true, interval: 2x}", "health.interval", 400},
		{"name mismatch", yaml, "name: other\nimage: a", "name", 400},
		{"too large", yaml, "name: web\nimage: a\nlabels: {x: " + strings.Repeat("a", 1<<20) + "}", "", 413},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, e := call(t, "PUT", hs.URL+"/v1/apps/web", "secret", c.ct, c.body)
			if code != c.code || e.Field != c.field || e.Error == "" {
				t.Errorf("got %d %+v, want %d naming field %q", code, e, c.code, c.field)
			}
		})
	}
	apps, _, err := store.Apps.List(context.Background(), st)
	if err != nil || len(apps) != 0 {
		t.Fatalf("stored apps after bad input: %v %v", apps, err)
	}
	// A good spec then goes through, with defaults applied.
	code, e := call(t, "PUT", hs.URL+"/v1/apps/web", "secret", yaml, "image: berth/demo:1\nport: 8080")
	if code != 201 {
		t.Fatalf("good spec: %d %+v", code, e)
	}
	app, err := store.Apps.Get(context.Background(), st, "web")
	if err != nil || app.Revision != 1 || app.Spec.Health == nil || !app.Spec.Health.TCP || app.Spec.ReplicaCount() != 1 {
		t.Fatalf("stored app = %+v, %v; want revision 1 with defaults", app, err)
	}
}

// A known path with another method answers 405 and names the methods it
// takes; an unknown path answers 404.
func TestWrongMethod(t *testing.T) {
	hs, _ := newServer(t)
	req, _ := http.NewRequest("PATCH", hs.URL+"/v1/apps/web", nil)
	req.Header.Set("Authorization", "Bearer secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	allow := resp.Header.Get("Allow")
	if resp.StatusCode != 405 || !strings.Contains(allow, "GET") || !strings.Contains(allow, "PUT") || !strings.Contains(allow, "DELETE") {
		t.Errorf("PATCH /v1/apps/web: %d, Allow %q; want 405 allowing GET, PUT and DELETE", resp.StatusCode, allow)
	}
	if code, e := call(t, "DELETE", hs.URL+"/v1/tasks/reports", "secret", "", ""); code != 405 || !strings.Contains(e.Error, "POST") {
		t.Errorf("DELETE /v1/tasks/reports: %d %+v; want 405 naming POST", code, e)
	}
	if code, _ := call(t, "GET", hs.URL+"/v1/nothing-here", "secret", "", ""); code != 404 {
		t.Errorf("GET /v1/nothing-here: %d, want 404", code)
	}
	if code, _ := call(t, "PATCH", hs.URL+"/v1/apps", "", "", ""); code != 401 {
		t.Errorf("PATCH /v1/apps without a token: %d, want 401 before anything else", code)
	}
}
