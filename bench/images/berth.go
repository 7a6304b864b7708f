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
	"strings"
	"syscall"
	"time"

	"berth/internal/client"
)

// berthUp is a `berth up` of the bench's own: free ports, a data dir in
// the bench's temporary dir. Its agent's pull cache is off: the bench runs
// the caches it measures in its own process.
type berthUp struct {
	bin, dataDir, logPath string
	addr, token           string
	cmd                   *exec.Cmd
	done                  chan struct{}
}

func startBerth(ctx context.Context, bin, tmp string) (*berthUp, error) {
	b := &berthUp{bin: bin, dataDir: filepath.Join(tmp, "data"), logPath: filepath.Join(tmp, "berth.log"), addr: freeAddr()}
	logFile, err := os.Create(b.logPath)
	if err != nil {
		return nil, err
	}
	b.cmd = exec.Command(b.bin, "up", "--listen", b.addr, "--data-dir", b.dataDir, "--gateway-addr", freeAddr(), "--pull-cache", "off")
	b.cmd.Stdout, b.cmd.Stderr = logFile, logFile
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
			return b, fmt.Errorf("berth up exited: %v (log: %s)", b.cmd.ProcessState, b.logPath)
		case <-ctx.Done():
			return b, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return b, errors.New("berth up: not answering within 60s")
		}
		t, err := os.ReadFile(filepath.Join(b.dataDir, "token"))
		if err != nil || strings.TrimSpace(string(t)) == "" {
			continue
		}
		b.token = strings.TrimSpace(string(t))
		if _, err := client.New(b.addr, b.token).Status(ctx); err == nil {
			return b, nil
		}
	}
}

// cli runs a berth verb against this server; it returns stdout, and
// stderr in the error.
func (b *berthUp) cli(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, b.bin, append([]string{"--addr", b.addr, "--data-dir", b.dataDir}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("berth %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// stop ends berth up with SIGTERM.
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
		logf("berth up did not stop within 15s of SIGTERM; killing it")
		b.cmd.Process.Kill()
		<-b.done
	}
}

func freeAddr() string {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}
