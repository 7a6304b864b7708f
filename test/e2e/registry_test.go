package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// docker runs the Docker CLI with its own config dir (logins are kept
// there, not in the user's ~/.docker).
func dockerWith(t *testing.T, config string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", append([]string{"--config", config}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// berth server serves its image registry under /v2/ on the API's address:
// the plain Docker way (login with a token, push, pull) works; no token,
// a wrong one and an agent token's push are refused.
func TestRegistryServedByBerth(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	config := t.TempDir()
	ref := b.addr + "/e2e-" + b.cluster[:8] + "/demo:1"
	t.Cleanup(func() { _, _ = dockerCLI(30*time.Second, "rmi", "-f", ref) })

	code, body, _ := b.rawRequest("GET", "/v2/", nil, "", "")
	if code != 401 || !strings.Contains(string(body), "UNAUTHORIZED") {
		t.Errorf("GET /v2/ without a token: %d %s; want 401 UNAUTHORIZED", code, body)
	}
	if code, _, _ := b.rawRequest("GET", "/v2/", nil, "", "Bearer wrong"); code != 401 {
		t.Errorf("GET /v2/ with a wrong token: %d; want 401", code)
	}
	if out, err := dockerWith(t, config, "login", b.addr, "-u", "berth", "-p", "wrong"); err == nil {
		t.Errorf("docker login with a wrong token succeeded: %s", out)
	}
	if out, err := dockerWith(t, config, "login", b.addr, "-u", "berth", "-p", b.token); err != nil {
		t.Fatalf("docker login with the user token: %v: %s", err, out)
	}
	if out, err := dockerCLI(30*time.Second, "tag", imageDemo1, ref); err != nil {
		t.Fatalf("docker tag: %v: %s", err, out)
	}
	if out, err := dockerWith(t, config, "push", ref); err != nil {
		t.Fatalf("docker push %s: %v: %s", ref, err, out)
	}
	if out, err := dockerCLI(30*time.Second, "rmi", ref); err != nil {
		t.Fatalf("docker rmi: %v: %s", err, out)
	}
	if out, err := dockerWith(t, config, "pull", ref); err != nil {
		t.Fatalf("docker pull %s: %v: %s", ref, err, out)
	}

	// An agent token pulls but does not push.
	agentToken := strings.TrimSpace(b.cli(t, "token", "create", "--role", "agent").stdout)
	agentConfig := t.TempDir()
	if out, err := dockerWith(t, agentConfig, "login", b.addr, "-u", "berth", "-p", agentToken); err != nil {
		t.Fatalf("docker login with an agent token: %v: %s", err, out)
	}
	if out, err := dockerWith(t, agentConfig, "pull", ref); err != nil {
		t.Fatalf("docker pull with an agent token: %v: %s", err, out)
	}
	other := b.addr + "/e2e-" + b.cluster[:8] + "/demo:agent"
	t.Cleanup(func() { _, _ = dockerCLI(30*time.Second, "rmi", "-f", other) })
	if out, err := dockerCLI(30*time.Second, "tag", imageDemo1, other); err != nil {
		t.Fatalf("docker tag: %v: %s", err, out)
	}
	out, err := dockerWith(t, agentConfig, "push", other)
	if err == nil || !strings.Contains(out, "denied") {
		t.Errorf("docker push with an agent token: %v: %s; want it denied", err, out)
	}
	// The API on the same address is unchanged.
	if code, _, _ := b.rawRequest("GET", "/v1/status", nil, "", "Bearer "+b.token); code != 200 {
		t.Errorf("GET /v1/status beside the registry: %d", code)
	}
}
