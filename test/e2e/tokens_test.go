package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestTokenRoles: `berth token create --role agent` prints only a token;
// that token cannot deploy (403, a message naming the role); a user token
// cannot register a node; a removed token answers 401.
func TestTokenRoles(t *testing.T) {
	t.Parallel()
	b := startBerth(t)

	r := b.cli(t, "token", "create", "--role", "agent", "--description", "e2e agent")
	agentTok := strings.TrimSpace(r.stdout)
	if r.code != 0 || !regexp.MustCompile(`^[0-9a-f]{12}\.[0-9a-f]{64}$`).MatchString(agentTok) {
		t.Fatalf("token create: want only a token on stdout:\n%s", r)
	}
	id, _, _ := strings.Cut(agentTok, ".")

	// Deploying with it: 403 from the API, a clear error from the CLI.
	code, data, err := b.rawRequest("PUT", "/v1/apps/web", []byte(demoSpec("web", imageDemo1, 1)), "application/yaml", "Bearer "+agentTok)
	if err != nil || code != 403 || !strings.Contains(string(data), "needs a user token; this is an agent token") {
		t.Errorf("PUT /v1/apps/web with an agent token: %d %s %v; want 403 naming the role", code, data, err)
	}
	path := filepath.Join(t.TempDir(), "app.yaml")
	if err := os.WriteFile(path, []byte(demoSpec("web", imageDemo1, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	r = b.cliEnv(t, []string{"BERTH_ADDR=" + b.addr, "BERTH_TOKEN=" + agentTok}, "deploy", "-f", path)
	if r.code == 0 || !strings.Contains(r.stderr, "agent token") {
		t.Errorf("berth deploy with an agent token: want a non-zero exit saying it is an agent token:\n%s", r)
	}
	if code, _, _ := b.rawRequest("GET", "/v1/apps/web", nil, "", "Bearer "+b.token); code != 404 {
		t.Errorf("GET /v1/apps/web after the refused deploy: %d; want 404 (nothing stored)", code)
	}

	// A user token may not register a node.
	node := []byte(`{"name":"ghost","address":"127.0.0.1","capacity":{"cpu":"1","memory":"64Mi"}}`)
	code, data, err = b.rawRequest("PUT", "/v1/nodes/ghost", node, "application/json", "Bearer "+b.token)
	if err != nil || code != 403 || !strings.Contains(string(data), "registering a node needs an agent token") {
		t.Errorf("PUT /v1/nodes/ghost with the user token: %d %s %v; want 403", code, data, err)
	}

	// Listed by id and role, never the token; removed: 401.
	r = b.cli(t, "token", "ls")
	if r.code != 0 || !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "agent") || strings.Contains(r.stdout, agentTok) {
		t.Errorf("token ls: want the id and role, not the token:\n%s", r)
	}
	if r = b.cli(t, "token", "rm", id); r.code != 0 {
		t.Fatalf("token rm:\n%s", r)
	}
	if code, _, err := b.rawRequest("GET", "/v1/status", nil, "", "Bearer "+agentTok); err != nil || code != 401 {
		t.Errorf("GET /v1/status with a removed token: %d %v; want 401", code, err)
	}
}
