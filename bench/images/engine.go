package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// engine is a Docker engine of the bench's own, as test/e2e's
// startEngineWith runs one: its own socket, data root and bridge, no
// images, no iptables rules. Docker treats 127.0.0.0/8 as an insecure
// registry, so it pulls from berth and from the caches on loopback as is.
type engine struct {
	name, dir, sock, bridge string
	cmd                     *exec.Cmd
	done                    chan struct{}
}

// startEngine starts engine i under dir.
func startEngine(ctx context.Context, dir string, i int) (*engine, error) {
	e := &engine{name: fmt.Sprintf("engine %d", i+1), dir: filepath.Join(dir, fmt.Sprintf("engine%d", i+1))}
	e.sock = filepath.Join(e.dir, "docker.sock")
	e.bridge = fmt.Sprintf("bimg%d%04x", i, rand.IntN(1<<16))
	if err := os.MkdirAll(e.dir, 0o700); err != nil {
		return nil, err
	}
	subnet, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "add", e.bridge, "type", "bridge"},
		{"addr", "add", subnet, "dev", e.bridge},
		{"link", "set", e.bridge, "up"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			e.stop()
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	logFile, err := os.Create(filepath.Join(e.dir, "dockerd.log"))
	if err != nil {
		e.stop()
		return nil, err
	}
	e.cmd = exec.Command("dockerd", "--host", "unix://"+e.sock, "--data-root", filepath.Join(e.dir, "root"),
		"--exec-root", filepath.Join(e.dir, "exec"), "--pidfile", filepath.Join(e.dir, "docker.pid"),
		"--bridge", e.bridge, "--iptables=false", "--ip-masq=false")
	e.cmd.Stdout, e.cmd.Stderr = logFile, logFile
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := e.cmd.Start(); err != nil {
		logFile.Close()
		e.stop()
		return nil, fmt.Errorf("dockerd: %w", err)
	}
	e.done = make(chan struct{})
	go func() { e.cmd.Wait(); logFile.Close(); close(e.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := e.docker(ctx, "version", "--format", "{{.Server.Version}}"); err == nil {
			return e, nil
		}
		select {
		case <-e.done:
			e.stop()
			return nil, fmt.Errorf("%s exited at start (log: %s)", e.name, filepath.Join(e.dir, "dockerd.log"))
		case <-ctx.Done():
			e.stop()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.stop()
			return nil, fmt.Errorf("%s does not answer within 60s", e.name)
		}
	}
}

// docker runs the Docker CLI against this engine (config: a login dir).
func (e *engine) docker(ctx context.Context, args ...string) (string, error) {
	return dockerCLI(ctx, append([]string{"-H", "unix://" + e.sock}, args...)...)
}

// empty removes every image of the engine (all of them the bench's).
func (e *engine) empty(ctx context.Context) error {
	out, err := e.docker(ctx, "images", "-aq")
	if err != nil {
		return err
	}
	if ids := strings.Fields(out); len(ids) > 0 {
		if _, err := e.docker(ctx, append([]string{"rmi", "-f"}, ids...)...); err != nil {
			return err
		}
	}
	return nil
}

// stop ends dockerd (SIGTERM, then SIGKILL) and removes its bridge and dir.
func (e *engine) stop() {
	if e.cmd != nil && e.cmd.Process != nil {
		e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.done:
		case <-time.After(20 * time.Second):
			e.cmd.Process.Kill()
			<-e.done
		}
	}
	_ = exec.Command("ip", "link", "del", e.bridge).Run()
	_ = os.RemoveAll(e.dir)
}

// freeSubnet is a /24 in 172.31.150-199 that no interface here uses (the
// e2e tests take 200-249).
func freeSubnet() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for range 50 {
		prefix := fmt.Sprintf("172.31.%d.", 150+rand.IntN(50))
		used := false
		for _, a := range addrs {
			used = used || strings.HasPrefix(a.String(), prefix)
		}
		if !used {
			return prefix + "1/24", nil
		}
	}
	return "", fmt.Errorf("no free subnet in 172.31.150-199.0/24")
}

// dockerCLI runs the docker CLI; the error carries its output.
func dockerCLI(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}
