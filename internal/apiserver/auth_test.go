package apiserver

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"berth/api"
	"berth/internal/store"
	"berth/internal/tasks"
)

// newToken creates a token through the API with the user token "secret".
func newToken(t *testing.T, url, role string) api.NewToken {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/v1/tokens", strings.NewReader(`{"role":"`+role+`","description":"test"}`))
	req.Header.Set("Authorization", "Bearer secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var nt api.NewToken
	if resp.StatusCode != 201 || json.Unmarshal(b, &nt) != nil || nt.Secret == "" || nt.ID == "" || nt.Role != role {
		t.Fatalf("POST /v1/tokens role %s: %d %s", role, resp.StatusCode, b)
	}
	if nt.Hash != "" {
		t.Errorf("the answer carries the token's hash: %s", b)
	}
	return nt
}

const nodeJSON = `{"name":"%s","address":"127.0.0.1","capacity":{"cpu":"2","memory":"1Gi"}}`

func nodeBody(name string) string { return strings.Replace(nodeJSON, "%s", name, 1) }

// want checks an answer's status and that its error says something.
func want(t *testing.T, what string, code int, e api.Error, wantCode int, wantMsg string) {
	t.Helper()
	if code != wantCode || !strings.Contains(e.Error, wantMsg) {
		t.Errorf("%s: %d %q; want %d saying %q", what, code, e.Error, wantCode, wantMsg)
	}
}

func putRecords(t *testing.T, st *store.Store, ops ...store.Op) {
	t.Helper()
	if _, err := st.Txn(context.Background(), ops...); err != nil {
		t.Fatal(err)
	}
}

// runningTask is a task whose attempt 1 runs on node.
func runningTask(id, node string) api.Task {
	now := time.Now().UTC()
	tk := tasks.New(id, api.TaskSpec{Image: "busybox", Resources: api.Resources{CPU: 100, Memory: api.MinMemory}}, now)
	tasks.Assign(&tk, "c0ffee", node, now)
	return tk
}

func TestAgentTokenActsOnlyForItsNode(t *testing.T) {
	env := newTaskServer(t)
	u, st := env.url, env.st
	agent := newToken(t, u, api.RoleAgent).Secret

	// Before it registers a node, it may act for none.
	code, e := call(t, "GET", u+"/v1/instances?node=n1", agent, "", "")
	want(t, "list before registering", code, e, 403, "register one first")

	// A user token cannot register a node; the agent token can, and binds.
	code, e = call(t, "PUT", u+"/v1/nodes/n1", "secret", "application/json", nodeBody("n1"))
	want(t, "user token registers a node", code, e, 403, "registering a node needs an agent token")
	if code, e := call(t, "PUT", u+"/v1/nodes/n1", agent, "application/json", nodeBody("n1")); code != 200 {
		t.Fatalf("agent registers n1: %d %+v", code, e)
	}
	if code, e := call(t, "PUT", u+"/v1/nodes/n1", agent, "application/json", nodeBody("n1")); code != 200 {
		t.Fatalf("agent heartbeats n1: %d %+v", code, e)
	}
	code, e = call(t, "PUT", u+"/v1/nodes/n2", agent, "application/json", nodeBody("n2"))
	want(t, "agent registers a second node", code, e, 403, "token is bound to node n1")
	if _, err := store.Nodes.Get(context.Background(), st, "n2"); err == nil {
		t.Error("node n2 was stored")
	}

	// User endpoints: 403 naming the role.
	code, e = call(t, "PUT", u+"/v1/apps/web", agent, "application/yaml", "image: berth/demo:1")
	want(t, "agent deploys", code, e, 403, "needs a user token; this is an agent token")
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/apps"}, {"GET", "/v1/nodes"}, {"POST", "/v1/nodes/n1/drain"},
		{"POST", "/v1/tasks"}, {"POST", "/v1/tokens"}, {"GET", "/v1/tokens"}, {"GET", "/v1/events"},
	} {
		code, e := call(t, c.method, u+c.path, agent, "application/json", "{}")
		want(t, "agent "+c.method+" "+c.path, code, e, 403, "token role agent may not call "+c.method+" /v1/")
	}
	if code, e := call(t, "GET", u+"/v1/status", agent, "", ""); code != 200 {
		t.Errorf("agent GET /v1/status: %d %+v", code, e)
	}

	// Instances: its own node's only.
	putRecords(t, st,
		store.Instances.Create("web-1", api.Instance{Name: "web-1", App: "web", Index: 1, Node: "n1", Desired: api.DesiredStop}),
		store.Instances.Create("web-2", api.Instance{Name: "web-2", App: "web", Index: 2, Node: "n2", Desired: api.DesiredStop}))
	status := `{"state":"running","healthy":true}`
	if code, e := call(t, "PUT", u+"/v1/instances/web-1/status", agent, "application/json", status); code != 200 {
		t.Errorf("agent reports its instance: %d %+v", code, e)
	}
	code, e = call(t, "PUT", u+"/v1/instances/web-2/status", agent, "application/json", status)
	want(t, "agent reports another node's instance", code, e, 403, "token is bound to node n1; instance web-2 is on node n2")
	code, e = call(t, "DELETE", u+"/v1/instances/web-2", agent, "", "")
	want(t, "agent deletes another node's instance", code, e, 403, "token is bound to node n1")
	if inst, err := store.Instances.Get(context.Background(), st, "web-2"); err != nil || inst.Status.State != "" {
		t.Errorf("web-2 after the refused reports: %+v %v; want it untouched", inst, err)
	}
	if code, e := call(t, "GET", u+"/v1/instances?node=n1", agent, "", ""); code != 200 {
		t.Errorf("agent lists its instances: %d %+v", code, e)
	}
	for _, q := range []string{"", "?node=n2", "?app=web", "?node=n2&watch=true&revision=1"} {
		code, e := call(t, "GET", u+"/v1/instances"+q, agent, "", "")
		want(t, "agent lists instances"+q, code, e, 403, "it may list only that node's instances (node=n1)")
	}
	if code, e := call(t, "DELETE", u+"/v1/instances/web-1", agent, "", ""); code != 204 {
		t.Errorf("agent deletes its retired instance: %d %+v", code, e)
	}

	// Tasks: reports, payloads and logs of attempts on its node only.
	own, other := runningTask("06h2367d03kwyvz1", "n1"), runningTask("06h2367d03kwyvz2", "n2")
	putRecords(t, st, store.Tasks.Create(own.ID, own), store.Tasks.Create(other.ID, other))
	report := func(id string) string {
		return `[{"id":"` + id + `","attempt":1,"state":"running","container_id":"abc"}]`
	}
	if code, e := call(t, "POST", u+"/v1/tasks/reports", agent, "application/json", report(own.ID)); code != 200 {
		t.Errorf("agent reports its task: %d %+v", code, e)
	}
	code, e = call(t, "POST", u+"/v1/tasks/reports", agent, "application/json",
		`[{"id":"`+own.ID+`","attempt":1,"state":"running"},{"id":"`+other.ID+`","attempt":1,"state":"running"}]`)
	want(t, "agent reports another node's task", code, e, 403, "attempt 1 of task "+other.ID+" is not on it")
	if tk, _ := store.Tasks.Get(context.Background(), st, other.ID); tk.Attempts[0].State != api.AttemptStarting {
		t.Errorf("the other node's task changed: %+v", tk.Attempts[0])
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/tasks/" + other.ID}, {"GET", "/v1/tasks/" + other.ID + "/payload"},
		{"PUT", "/v1/tasks/" + other.ID + "/attempts/1/log?offset=0"}, {"PUT", "/v1/tasks/" + own.ID + "/attempts/2/log?offset=0"},
		{"GET", "/v1/tasks?node=n2"}, {"GET", "/v1/tasks"},
	} {
		code, e := call(t, c.method, u+c.path, agent, "", "x")
		want(t, "agent "+c.method+" "+c.path, code, e, 403, "token is bound to node n1")
	}
	if code, e := call(t, "PUT", u+"/v1/tasks/"+own.ID+"/attempts/1/log?offset=0", agent, "", "hello\n"); code != 204 {
		t.Errorf("agent uploads its attempt's log: %d %+v", code, e)
	}
	for _, path := range []string{"/v1/tasks/" + own.ID, "/v1/tasks/" + own.ID + "/payload", "/v1/tasks?node=n1"} {
		if code, e := call(t, "GET", u+path, agent, "", ""); code != 200 {
			t.Errorf("agent GET %s: %d %+v", path, code, e)
		}
	}
}

// A gateway token may follow apps, instances and routes, wake apps and
// report access, and nothing else.
func TestGatewayTokenOnlyRoutes(t *testing.T) {
	hs, _ := newServer(t)
	u := hs.URL
	gw := newToken(t, u, api.RoleGateway).Secret
	if code, e := call(t, "PUT", u+"/v1/apps/web", "secret", "application/yaml", "name: web\nimage: berth/demo:1\n"); code != 200 && code != 201 {
		t.Fatalf("user deploys web: %d %+v", code, e)
	}
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/status", ""}, {"GET", "/v1/apps", ""}, {"GET", "/v1/apps?watch=true&revision=1", ""},
		{"GET", "/v1/instances", ""}, {"GET", "/v1/routes", ""},
		{"POST", "/v1/apps/web/wake", ""}, {"POST", "/v1/access", `{"apps":{"web":"2026-01-02T03:04:05Z"}}`},
	} {
		// Allowed: past the access check (a wake of an app without an
		// idle policy is the handler's 409).
		code, e := callStart(t, c.method, u+c.path, gw, c.body)
		if code == 401 || code == 403 || code >= 500 {
			t.Errorf("gateway %s %s: %d %+v; want it allowed", c.method, c.path, code, e)
		}
	}
	for _, c := range []struct{ method, path string }{
		{"PUT", "/v1/apps/web"}, {"DELETE", "/v1/apps/web"}, {"GET", "/v1/apps/web"}, {"POST", "/v1/apps/web/scale"},
		{"GET", "/v1/apps/web/logs"}, {"GET", "/v1/events"}, {"GET", "/v1/nodes"}, {"PUT", "/v1/nodes/n1"},
		{"POST", "/v1/tasks"}, {"GET", "/v1/tasks"}, {"POST", "/v1/tokens"}, {"GET", "/v1/tokens"},
		{"PUT", "/v1/instances/web-1/status"},
	} {
		code, e := call(t, c.method, u+c.path, gw, "application/json", "{}")
		msg := "token role gateway may not call " + c.method + " /v1/"
		if c.path == "/v1/nodes/n1" {
			msg = "needs an agent token (berth token create --role agent); this is a gateway token"
		}
		want(t, "gateway "+c.method+" "+c.path, code, e, 403, msg)
	}
	if err := (api.TokenRequest{Role: api.RoleGateway}).Validate(); err != nil {
		t.Errorf("role gateway does not validate: %v", err)
	}
}

// callStart is call for answers that may stream (a watch): only the
// status line and, for an error, its body are read.
func callStart(t *testing.T, method, url, token, body string) (int, api.Error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var e api.Error
	if resp.StatusCode >= 300 {
		_ = json.NewDecoder(resp.Body).Decode(&e)
	}
	return resp.StatusCode, e
}

func TestAccessString(t *testing.T) {
	for a, want := range map[access]string{userOnly: "user", agentOnly: "agent", userOrAgent: "user or agent",
		userOrGateway: "user or gateway", userAgentOrGateway: "user, agent or gateway"} {
		if got := a.String(); got != want {
			t.Errorf("access %b: %q, want %q", a, got, want)
		}
	}
}

func TestTokenRecordsAndRemoval(t *testing.T) {
	hs, st := newServer(t)
	u := hs.URL
	nt := newToken(t, u, api.RoleUser)
	if code, e := call(t, "GET", u+"/v1/apps", nt.Secret, "", ""); code != 200 {
		t.Fatalf("new user token: %d %+v", code, e)
	}

	// The store holds the token's hash, never the token.
	resp, err := st.Client().Get(context.Background(), "/berth/tokens/"+nt.ID)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("token records: %v %v", resp, err)
	}
	_, secret, _ := strings.Cut(nt.Secret, ".")
	raw := string(resp.Kvs[0].Value)
	if strings.Contains(raw, secret) || !strings.Contains(raw, hashToken(nt.Secret)) {
		t.Errorf("token record %s: holds the secret, or not its hash", raw)
	}

	// Unknown tokens: well formed or not, 401.
	for _, tok := range []string{nt.ID + "." + strings.Repeat("0", 64), "0123456789ab." + secret, nt.Secret + "x", "bearer"} {
		if code, e := call(t, "GET", u+"/v1/apps", tok, "", ""); code != 401 || e.Error == "" {
			t.Errorf("token %q: %d %+v; want 401", tok, code, e)
		}
	}

	// Bad input: 400 naming the field, nothing stored.
	for body, field := range map[string]string{`{"role":"admin"}`: "role", `{"role":"agent","bogus":1}`: "bogus",
		`{"role":"agent","description":"` + strings.Repeat("d", 201) + `"}`: "description"} {
		code, e := call(t, "POST", u+"/v1/tokens", "secret", "application/json", body)
		if code != 400 || e.Field != field {
			t.Errorf("POST /v1/tokens %s: %d %+v; want 400 naming %s", body, code, e, field)
		}
	}
	if n := count(t, st, store.Tokens); n != 1 {
		t.Errorf("%d token records after bad requests; want 1", n)
	}

	// A second server on the same store knows the token too.
	other := httptest.NewServer((&Server{Store: st, Token: "secret", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}).Handler())
	defer other.Close()
	if code, e := call(t, "GET", other.URL+"/v1/apps", nt.Secret, "", ""); code != 200 {
		t.Fatalf("token on a second server: %d %+v", code, e)
	}

	// Listed without hashes; removed: 401 at once here, soon on the other.
	req, _ := http.NewRequest("GET", u+"/v1/tokens", nil)
	req.Header.Set("Authorization", "Bearer secret")
	lr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var l api.List[api.Token]
	b, _ := io.ReadAll(lr.Body)
	lr.Body.Close()
	if json.Unmarshal(b, &l) != nil || len(l.Items) != 1 || l.Items[0].ID != nt.ID || l.Items[0].Hash != "" || strings.Contains(string(b), "hash") {
		t.Errorf("GET /v1/tokens: %s", b)
	}
	if code, e := call(t, "DELETE", u+"/v1/tokens/"+nt.ID, "secret", "", ""); code != 204 {
		t.Fatalf("DELETE token: %d %+v", code, e)
	}
	if code, _ := call(t, "DELETE", u+"/v1/tokens/"+nt.ID, "secret", "", ""); code != 404 {
		t.Errorf("DELETE a removed token: %d, want 404", code)
	}
	if code, e := call(t, "GET", u+"/v1/apps", nt.Secret, "", ""); code != 401 {
		t.Errorf("removed token: %d %+v; want 401", code, e)
	}
	deadline := time.Now().Add(10 * tokenCacheTTL)
	for {
		code, _ := call(t, "GET", other.URL+"/v1/apps", nt.Secret, "", "")
		if code == 401 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second server still takes the removed token: %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Every route has an access rule, and docs/api.md says which token each
// endpoint takes, as a "Token: ..." line in its section.
func TestRouteAccessIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	said := map[string]string{} // route -> what its section says
	heading := ""
	for _, line := range strings.Split(string(doc), "\n") {
		switch {
		case strings.HasPrefix(line, "#"):
			heading = strings.TrimPrefix(line, "### ")
		case strings.HasPrefix(line, "Token: ") && heading != "":
			s := strings.TrimPrefix(line, "Token: ")
			if i := strings.IndexAny(s, ".("); i >= 0 {
				s = s[:i]
			}
			said[heading] = strings.TrimSpace(s)
		}
	}
	for _, rt := range (&Server{}).routes() {
		if rt.access == 0 {
			t.Errorf("route %q has no access rule", rt.pattern)
			continue
		}
		if got := said[rt.pattern]; got != rt.access.String() {
			t.Errorf("docs/api.md, ### %s: says %q; want a line 'Token: %s.'", rt.pattern, "Token: "+got, rt.access)
		}
	}
}

func TestEnsureAgentToken(t *testing.T) {
	hs, st := newServer(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agent-token")
	tok, err := EnsureAgentToken(ctx, st, path, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v; want mode 0600", path, fi, err)
	}
	if again, err := EnsureAgentToken(ctx, st, path, "n1"); err != nil || again != tok {
		t.Errorf("second call: %q %v; want the same token", again, err)
	}
	if code, e := call(t, "PUT", hs.URL+"/v1/nodes/n1", tok, "application/json", nodeBody("n1")); code != 200 {
		t.Fatalf("the agent token registers n1: %d %+v", code, e)
	}
	// Bound to n1, it is no good for a node of another name: a new one.
	other, err := EnsureAgentToken(ctx, st, path, "n2")
	if err != nil || other == tok {
		t.Fatalf("for node n2: %q %v; want a new token", other, err)
	}
	if b, _ := os.ReadFile(path); strings.TrimSpace(string(b)) != other {
		t.Errorf("the file holds %q; want the new token", b)
	}
}

// Many requests at once with a token not checked yet: each is answered
// right (run with -race: the cache is shared).
func TestTokenCacheConcurrent(t *testing.T) {
	hs, _ := newServer(t)
	user := newToken(t, hs.URL, api.RoleUser).Secret
	codes := make(chan int, 50)
	for range 50 {
		go func() {
			req, _ := http.NewRequest("GET", hs.URL+"/v1/apps", nil)
			req.Header.Set("Authorization", "Bearer "+user)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	for range 50 {
		if code := <-codes; code != 200 {
			t.Errorf("a concurrent request: %d, want 200", code)
		}
	}
}
