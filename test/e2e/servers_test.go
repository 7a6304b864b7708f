package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// `berth server` and two `berth agent` processes on one Docker engine:
// both nodes register and are ready, and an app of 2 replicas runs one
// instance on each node, each in a container of its own node.
func TestServersTwoAgents(t *testing.T) {
	c := startServers(t, 1)
	c.startAgent(t, "n1", "zone=a", "disk=ssd")
	c.startAgent(t, "n2", "zone=b")

	r := c.cli(t, "nodes")
	if r.code != 0 {
		t.Fatalf("berth nodes failed:\n%s", r)
	}
	for _, n := range []string{"n1", "n2"} {
		found := false
		for _, line := range strings.Split(r.stdout, "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == n {
				found = true
				if f[1] != "ready" {
					t.Errorf("berth nodes: %s is %s, want ready:\n%s", n, f[1], r.stdout)
				}
			}
		}
		if !found {
			t.Errorf("berth nodes: no %s:\n%s", n, r.stdout)
		}
	}
	if !strings.Contains(r.stdout, "zone=a") {
		t.Errorf("berth nodes shows no labels of n1:\n%s", r.stdout)
	}

	api := c.api(t)
	if r := c.deployCLI(t, demoSpec("two", imageDemo1, 2)); r.code != 0 {
		t.Fatalf("deploy failed:\n%s", r)
	}
	var insts []instance
	waitFor(t, 60*time.Second, func() (bool, string) {
		insts = api.instances(t, "two")
		return len(insts) == 2 && countRoutable(insts) == 2, describe(insts)
	})
	if insts[0].Node == insts[1].Node {
		t.Fatalf("both instances on %s, want one on each node: %s", insts[0].Node, describe(insts))
	}
	for _, inst := range insts {
		code, body, err := curl(inst.Status.Address, "/")
		if err != nil || code != 200 || !strings.Contains(body, inst.Name+"."+inst.Node) {
			t.Errorf("GET %s (%s on %s): %d %q %v", inst.Status.Address, inst.Name, inst.Node, code, body, err)
		}
		// Each agent made its own node's container.
		cs := containers(t, c.cluster, "berth.instance="+inst.Name)
		if len(cs) != 1 || cs[0].State != "running" {
			t.Errorf("containers of %s: %s, want one running", inst.Name, describeContainers(cs))
			continue
		}
		if got := dockerInspect(t, cs[0].ID, `{{index .Config.Labels "berth.node"}}`); got != inst.Node {
			t.Errorf("container of %s carries node %q, want %q", inst.Name, got, inst.Node)
		}
	}
	for _, n := range []string{"n1", "n2"} {
		if cs := containers(t, c.cluster, "berth.app=two", "berth.node="+n); len(cs) != 1 {
			t.Errorf("node %s runs %s, want 1 container of the app", n, describeContainers(cs))
		}
	}
}

// The agent refuses bad flags before it touches anything.
func TestAgentFlags(t *testing.T) {
	needDocker(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--labels", "zone"}, "key=value"},
		{[]string{"--labels", "zone=a b"}, "--labels zone=a b"},
		{[]string{"--reserve-memory", "lots"}, "--reserve-memory"},
		{[]string{"--reserve-cpu", "-1"}, "--reserve-cpu"},
		{[]string{"--node", "no spaces"}, "--node"},
		{[]string{"--advertise", "somewhere"}, "--advertise"},
	} {
		args := append([]string{"agent", "--server", "127.0.0.1:1", "--token", "x", "--node", "n1"}, tc.args...)
		r := (&berth{}).cliEnv(t, nil, args...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("berth %s: want a failure naming %q\n%s", strings.Join(args, " "), tc.want, r)
		}
	}
	r := (&berth{}).cliEnv(t, nil, "agent", "--server", "127.0.0.1:1", "--node", "n1")
	if r.code == 0 || !strings.Contains(r.stderr, "token create --role agent") {
		t.Errorf("berth agent without a token: want a failure saying how to get one\n%s", r)
	}
}

// deployCLI deploys a spec through the CLI, with every server's address.
func (c *servers) deployCLI(t *testing.T, spec string, args ...string) cliResult {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.yaml")
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return c.cli(t, append([]string{"deploy", "-f", path}, args...)...)
}
