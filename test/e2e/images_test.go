package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An image that exists only in berth's registry runs on two nodes whose
// Docker engines (the test's own, sharing nothing) have never seen it:
// the deploy pins its digest and each agent pulls it through its cache.
func TestRegistryImageRunsOnEveryNode(t *testing.T) {
	needDocker(t)
	c := startServers(t, 1)
	server := c.list[0].addr
	repo := "e2e-" + c.cluster[:8] + "/only-in-berth"
	ref := server + "/" + repo + ":1"

	// Build an image no engine has (a file of its own on top of the demo),
	// push it into berth's registry and drop it from the machine's engine.
	ctxDir := t.TempDir()
	nonce := randomToken(t)
	if err := os.WriteFile(filepath.Join(ctxDir, "nonce"), []byte(nonce), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM "+imageDemo1+"\nCOPY nonce /nonce\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = dockerCLI(30*time.Second, "rmi", "-f", ref) })
	if out, err := dockerCLI(2*time.Minute, "build", "-q", "-t", ref, ctxDir); err != nil {
		t.Fatalf("docker build: %v: %s", err, out)
	}
	config := t.TempDir()
	if out, err := dockerWith(t, config, "login", server, "-u", "berth", "-p", c.token); err != nil {
		t.Fatalf("docker login: %v: %s", err, out)
	}
	if out, err := dockerWith(t, config, "push", ref); err != nil {
		t.Fatalf("docker push: %v: %s", err, out)
	}

	e1, e2 := startEngineWith(t), startEngineWith(t) // no images at all
	for _, e := range []*engine{e1, e2} {
		t.Cleanup(func() {
			if e.proc.running() {
				out, _ := e.docker("ps", "-aq", "--filter", "label=berth.cluster="+c.cluster)
				if ids := strings.Fields(out); len(ids) > 0 {
					_, _ = e.docker(append([]string{"rm", "-f"}, ids...)...)
				}
			}
		})
	}
	c.startAgentWith(t, "r1", []string{"--docker", "unix://" + e1.sock})
	c.startAgentWith(t, "r2", []string{"--docker", "unix://" + e2.sock})

	spec := strings.Replace(demoSpec("pinned", repo+":1", 2), "replicas: 2\n", "replicas: 2\nplacement: {max_per_node: 1}\n", 1)
	if r := c.deployCLI(t, spec); r.code != 0 {
		t.Fatalf("deploy:\n%s", r)
	}
	api := c.api(t)
	var app appRecord
	api.getJSON(t, "/v1/apps/pinned", &app)
	if !strings.HasPrefix(app.ImageDigest, "sha256:") {
		t.Fatalf("the app's image is not pinned to a digest of berth's registry: %+v", app)
	}
	var insts []instance
	waitFor(t, 90*time.Second, func() (bool, string) {
		insts = api.instances(t, "pinned")
		return len(insts) == 2 && countRoutable(insts) == 2, describe(insts)
	})
	nodes := map[string]bool{}
	for _, i := range insts {
		nodes[i.Node] = true
		code, body, err := curl(i.Status.Address, "/")
		if err != nil || code != 200 || !strings.Contains(body, i.Name) {
			t.Errorf("GET %s (%s on %s): %d %q %v", i.Status.Address, i.Name, i.Node, code, body, err)
		}
	}
	if !nodes["r1"] || !nodes["r2"] {
		t.Fatalf("instances on %v; want one on each node", nodes)
	}
	for _, e := range []*engine{e1, e2} {
		out, err := e.docker("ps", "-q", "--filter", "label=berth.cluster="+c.cluster)
		if err != nil || len(strings.Fields(out)) != 1 {
			t.Fatalf("the test engine's containers: %q (%v); want one", out, err)
		}
		image, err := e.docker("inspect", "--format", "{{.Config.Image}}", strings.TrimSpace(out))
		if err != nil || !strings.HasPrefix(image, "127.0.0.1:") || !strings.Contains(image, "/"+repo+"@"+app.ImageDigest) {
			t.Fatalf("the test engine runs %q (%v); want 127.0.0.1:<cache>/%s@%s", image, err, repo, app.ImageDigest)
		}
	}
}

// Two servers share the registry's storage: an image pushed through the
// one that does not lead (its manifest is forwarded to the leader) is
// listed, resolved and pulled through either, and runs; a server started
// on a storage of its own is refused.
func TestRegistrySharedByServers(t *testing.T) {
	c := startServers(t, 2)
	leader := c.leader(t, 30*time.Second)
	other := c.list[0]
	if other == leader {
		other = c.list[1]
	}
	ref := other.addr + "/shared/demo:1"
	t.Cleanup(func() { _, _ = dockerCLI(30*time.Second, "rmi", ref) })
	if out, err := dockerCLI(30*time.Second, "tag", imageDemo1, ref); err != nil {
		t.Fatalf("docker tag: %v: %s", err, out)
	}
	config := t.TempDir()
	if out, err := dockerWith(t, config, "login", other.addr, "-u", "berth", "-p", c.token); err != nil {
		t.Fatalf("docker login: %v: %s", err, out)
	}
	if out, err := dockerWith(t, config, "push", ref); err != nil {
		t.Fatalf("docker push through the server that does not lead: %v: %s", err, out)
	}
	for _, s := range c.list {
		if r := s.view(c).cli(t, "image", "ls", "shared/demo"); r.code != 0 || !strings.Contains(r.stdout, "shared/demo") {
			t.Errorf("berth image ls through %s:\n%s", s.addr, r)
		}
	}

	c.startAgent(t, "n1")
	b := other.view(c)
	if r := b.deploy(t, demoSpec("shared", "shared/demo:1", 1)); r.code != 0 {
		t.Fatalf("deploy through %s:\n%s", other.addr, r)
	}
	var app appRecord
	b.getJSON(t, "/v1/apps/shared", &app)
	if !strings.HasPrefix(app.ImageDigest, "sha256:") {
		t.Fatalf("the deploy did not pin the pushed image: %+v", app)
	}
	waitFor(t, 60*time.Second, func() (bool, string) {
		insts := b.instances(t, "shared")
		return len(insts) == 1 && countRoutable(insts) == 1, describe(insts)
	})

	// A server on a storage of its own does not start.
	other.stop(t)
	for i, a := range other.args {
		if a == "--registry-dir" {
			other.args[i+1] = t.TempDir()
		}
	}
	other.start(t)
	waitFor(t, 60*time.Second, func() (bool, string) { return !other.running(), "the server still runs" })
	if log := tailFile(other.logPath, 20); !strings.Contains(log, "is not the image registry storage of this cluster's other servers") {
		t.Errorf("a server on its own registry storage: want a refusal naming it; log:\n%s", log)
	}
}
