package e2e

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// engine is a Docker engine of the test's own, beside the machine's: it
// can be restarted without disturbing anything else. Its containers sit
// on a bridge of its own; published ports go through docker-proxy.
type engine struct {
	dir, sock, bridge string
	proc              *proc
}

func startEngine(t *testing.T) *engine {
	t.Helper()
	return startEngineWith(t, imageDemo1)
}

// startEngineWith starts an engine of the test's own holding only the
// given images of the machine's engine.
func startEngineWith(t *testing.T, images ...string) *engine {
	t.Helper()
	dir, err := os.MkdirTemp("", "berth-e2e-dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	e := &engine{dir: dir, sock: filepath.Join(dir, "docker.sock"), bridge: fmt.Sprintf("e2ebr%04x", rand.IntN(1<<16))}
	subnet := freeSubnet(t)
	for _, args := range [][]string{
		{"link", "add", e.bridge, "type", "bridge"},
		{"addr", "add", subnet, "dev", e.bridge},
		{"link", "set", e.bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	e.proc = &proc{name: "dockerd", logPath: filepath.Join(dir, "dockerd.log")}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- tail of the test engine's log ----\n%s", tailFile(e.proc.logPath, 30))
		}
		if e.proc.running() {
			out, _ := e.docker("ps", "-aq")
			if ids := strings.Fields(out); len(ids) > 0 {
				_, _ = e.docker(append([]string{"rm", "-f"}, ids...)...)
			}
		}
		e.stop(t)
		_ = exec.Command("ip", "link", "del", e.bridge).Run()
		_ = os.RemoveAll(dir)
	})
	e.start(t)
	// The images come from the machine's engine, not from a registry.
	for _, image := range images {
		cmd := exec.Command("sh", "-c", fmt.Sprintf("docker save %s | docker -H unix://%s load -q", image, e.sock))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("load %s into the test engine: %v: %s", image, err, out)
		}
	}
	return e
}

// freeSubnet is a /24 in 172.31.200-249 that no interface here uses.
func freeSubnet(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		n := 200 + rand.IntN(50)
		prefix := fmt.Sprintf("172.31.%d.", n)
		used := false
		for _, a := range addrs {
			used = used || strings.HasPrefix(a.String(), prefix)
		}
		if !used {
			return prefix + "1/24"
		}
	}
	t.Fatal("no free subnet in 172.31.200-249.0/24")
	return ""
}

func (e *engine) start(t *testing.T) {
	t.Helper()
	e.proc.bin, e.proc.args = "dockerd", []string{"--host", "unix://" + e.sock, "--data-root", filepath.Join(e.dir, "root"),
		"--exec-root", filepath.Join(e.dir, "exec"), "--pidfile", filepath.Join(e.dir, "docker.pid"),
		"--bridge", e.bridge, "--iptables=false", "--ip-masq=false"}
	e.proc.start(t)
	waitFor(t, 60*time.Second, func() (bool, string) {
		out, err := e.docker("version", "--format", "{{.Server.Version}}")
		return err == nil, out
	})
}

// stop stops the engine as a restart would: SIGTERM, and it stops its
// containers on the way out.
func (e *engine) stop(t *testing.T) {
	t.Helper()
	if e.proc.running() {
		e.proc.stop(t)
	}
}

func (e *engine) docker(args ...string) (string, error) {
	out, err := exec.Command("docker", append([]string{"-H", "unix://" + e.sock}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// running lists the running containers of the cluster's app in this engine.
func (e *engine) running(cluster, app string) ([]string, error) {
	out, err := e.docker("ps", "-q", "--filter", "label=berth.cluster="+cluster, "--filter", "label=berth.app="+app)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	return strings.Fields(out), nil
}

// The Docker engine under an agent restarts: its containers stop with it.
// The agent reconnects and reconciles: the app's instances run and are
// healthy again, with exactly one container each.
func TestAgentSurvivesEngineRestart(t *testing.T) {
	needDocker(t)
	e := startEngine(t)
	c := startServers(t, 1)
	t.Cleanup(func() {
		if e.proc.running() && c.cluster != "" {
			out, _ := e.docker("ps", "-aq", "--filter", "label=berth.cluster="+c.cluster)
			if ids := strings.Fields(out); len(ids) > 0 {
				_, _ = e.docker(append([]string{"rm", "-f"}, ids...)...)
			}
		}
	})
	agent := c.startAgentWith(t, "d1", []string{"--docker", "unix://" + e.sock})
	api := c.api(t)
	if r := c.deployCLI(t, demoSpec("engine", imageDemo1, 2)); r.code != 0 {
		t.Fatalf("deploy failed:\n%s", r)
	}
	var insts []instance
	waitFor(t, 90*time.Second, func() (bool, string) {
		insts = api.instances(t, "engine")
		return len(insts) == 2 && countRoutable(insts) == 2, describe(insts)
	})

	down := time.Now()
	e.stop(t)
	e.start(t)
	t.Logf("test engine stopped and started again in %s", time.Since(down).Round(100*time.Millisecond))

	waitFor(t, 120*time.Second, func() (bool, string) {
		insts = api.instances(t, "engine")
		ids, err := e.running(c.cluster, "engine")
		if err != nil {
			return false, err.Error()
		}
		running := 0
		for _, i := range insts {
			if i.Desired == "run" {
				running++
			}
		}
		if running != 2 || countRoutable(insts) != 2 || len(ids) != 2 {
			return false, fmt.Sprintf("%d containers running; %s", len(ids), describe(insts))
		}
		// Each answers at the address its record gives: a container
		// restarted by its engine may have a new host port, which the
		// record must follow.
		for _, i := range insts {
			if i.Desired != "run" {
				continue // a replaced one, still being removed
			}
			if code, body, err := curl(i.Status.Address, "/"); err != nil || code != 200 || !strings.Contains(body, i.Name) {
				return false, fmt.Sprintf("GET %s (%s): %d %q %v", i.Status.Address, i.Name, code, body, err)
			}
		}
		return true, ""
	})
	t.Logf("instances healthy and answering again %s after the engine went down", time.Since(down).Round(100*time.Millisecond))
	if !agent.running() {
		t.Fatal("the agent exited when its engine went away")
	}
}
