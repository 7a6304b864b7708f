package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"berth/internal/client"

	"berth/bench/internal/measure"
)

// berthUp is a `berth up` of the bench's own: a free port, a temporary data dir.
type berthUp struct {
	bin, tmp, dataDir, logPath string
	addr, token, cluster       string
	cmd                        *exec.Cmd
	done                       chan struct{}
	client                     *client.Client
}

func startBerth(ctx context.Context, bin, tmp string) (*berthUp, error) {
	b := &berthUp{bin: bin, tmp: tmp, dataDir: filepath.Join(tmp, "data"), logPath: filepath.Join(tmp, "berth.log")}
	if b.bin == "" {
		b.bin = filepath.Join(tmp, "berth")
		logf("building berth")
		build := exec.CommandContext(ctx, "go", "build", "-o", b.bin, "./cmd/berth")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return nil, fmt.Errorf("go build ./cmd/berth (run from the repository root): %w", err)
		}
	}
	b.addr = freeAddr()
	logFile, err := os.Create(b.logPath)
	if err != nil {
		return nil, err
	}
	b.cmd = exec.Command(b.bin, "up", "--listen", b.addr, "--data-dir", b.dataDir, "--gateway-addr", freeAddr())
	b.cmd.Stdout, b.cmd.Stderr = logFile, logFile
	// Own process group: Ctrl-C reaches the bench, which stops berth before
	// removing the containers.
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := b.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("berth up: %w", err)
	}
	b.done = make(chan struct{})
	go func() { b.cmd.Wait(); logFile.Close(); close(b.done) }()
	logf("berth up (pid %d) on %s, data dir %s", b.cmd.Process.Pid, b.addr, b.dataDir)

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-b.done:
			return b, fmt.Errorf("berth up exited: %v", b.cmd.ProcessState)
		case <-ctx.Done():
			return b, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return b, errors.New("berth up: no node ready within 60s")
		}
		if b.client == nil {
			t, err := os.ReadFile(filepath.Join(b.dataDir, "token"))
			if err != nil || strings.TrimSpace(string(t)) == "" {
				continue
			}
			b.token = strings.TrimSpace(string(t))
			b.client = client.New(b.addr, b.token)
		}
		st, err := b.client.Status(ctx)
		if err != nil || st.Cluster == "" {
			continue
		}
		b.cluster = st.Cluster
		nodes, err := b.client.ListNodes(ctx)
		if err != nil {
			continue
		}
		for _, n := range nodes.Items {
			if n.State == "ready" {
				logf("berth ready: cluster %s, node %s", b.cluster, n.Name)
				return b, nil
			}
		}
	}
}

// cli runs a berth verb against this server.
func (b *berthUp) cli(ctx context.Context, args ...string) (string, error) {
	args = append([]string{"--addr", b.addr, "--data-dir", b.dataDir}, args...)
	out, err := exec.CommandContext(ctx, b.bin, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("berth %s: %v: %s", strings.Join(args[4:], " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// peakRSS is VmHWM of berth up, in MiB.
func (b *berthUp) peakRSS() float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// stop ends berth up with SIGTERM (its agent then makes no container again).
func (b *berthUp) stop() {
	if b == nil || b.cmd == nil || b.cmd.Process == nil {
		return
	}
	select {
	case <-b.done:
		return
	default:
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(15 * time.Second):
		fmt.Fprintln(os.Stderr, "bench tasks: berth up did not stop within 15s of SIGTERM; killing it")
		b.cmd.Process.Kill()
		<-b.done
	}
}

// warnings counts berth's log lines at WARN and ERROR, by message.
func (b *berthUp) warnings() string {
	data, err := os.ReadFile(b.logPath)
	if err != nil {
		return ""
	}
	var w measure.WarnLog
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			_, _ = w.Write([]byte(l))
		}
	}
	return w.Summary()
}

func (b *berthUp) logTail(n int) string {
	data, err := os.ReadFile(b.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

func docker(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(stdout.String()), fmt.Errorf("docker %s: %v: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// removeContainers removes every container carrying label (key=value),
// retrying: an interrupted removal makes a second one refuse for a while.
func removeContainers(label string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for attempt := 0; ; attempt++ {
		out, err := docker(ctx, "ps", "-aq", "--filter", "label="+label)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench tasks: cleanup:", err)
			return
		}
		ids := strings.Fields(out)
		if len(ids) == 0 {
			return
		}
		if attempt == 10 {
			fmt.Fprintf(os.Stderr, "bench tasks: cleanup: %d containers labelled %s are left\n", len(ids), label)
			return
		}
		if attempt == 0 {
			fmt.Fprintf(os.Stderr, "bench tasks: cleanup: removing %d containers labelled %s\n", len(ids), label)
		}
		docker(ctx, append([]string{"rm", "-f"}, ids...)...)
		time.Sleep(time.Second)
	}
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}
