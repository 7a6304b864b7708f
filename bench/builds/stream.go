package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stampedLine is a line of a command's output and when it arrived, from
// the command's start.
type stampedLine struct {
	at     time.Duration
	stderr bool
	text   string
}

// stamped is the output of a command run by runStamped.
type stamped struct {
	lines []stampedLine // in the order they arrived
	wall  time.Duration // until the command exited
}

// first is when the first line containing s arrived (ok false: none did).
func (s stamped) first(sub string) (time.Duration, bool) {
	for _, l := range s.lines {
		if strings.Contains(l.text, sub) {
			return l.at, true
		}
	}
	return 0, false
}

// firstMatch is when the first line that match says yes to arrived.
func (s stamped) firstMatch(match func(string) bool) (time.Duration, bool) {
	for _, l := range s.lines {
		if match(l.text) {
			return l.at, true
		}
	}
	return 0, false
}

func (s stamped) text() string {
	var b strings.Builder
	for _, l := range s.lines {
		fmt.Fprintf(&b, "%8.3fs %s\n", l.at.Seconds(), l.text)
	}
	return b.String()
}

// tail is the last n lines, for an error.
func (s stamped) tail(n int) string {
	lines := s.lines[max(len(s.lines)-n, 0):]
	var parts []string
	for _, l := range lines {
		parts = append(parts, l.text)
	}
	return strings.Join(parts, "\n")
}

// runStamped runs cmd, reading its stdout and stderr as streams, line by
// line (a line ends at \n or \r), stamping each line as it arrives;
// onLine, when not nil, sees each line as it comes. start is the moment
// the stamps count from (just before the command starts).
func runStamped(cmd *exec.Cmd, onLine func(stampedLine)) (stamped, time.Time, error) {
	var res stamped
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, time.Time{}, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return res, time.Time{}, err
	}
	// Its own process group, killed whole when the context ends: a
	// child that outlives it (git's remote helper) would hold the pipes
	// open, and the reads with them.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	read := func(r io.Reader, isErr bool) {
		defer wg.Done()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		sc.Split(scanLinesOrCR)
		for sc.Scan() {
			l := stampedLine{at: time.Since(start), stderr: isErr, text: sc.Text()}
			if strings.TrimSpace(l.text) == "" {
				continue
			}
			mu.Lock()
			res.lines = append(res.lines, l)
			mu.Unlock()
			if onLine != nil {
				onLine(l)
			}
		}
		io.Copy(io.Discard, r)
	}
	if err := cmd.Start(); err != nil {
		return res, start, err
	}
	wg.Add(2)
	go read(stdout, false)
	go read(stderr, true)
	wg.Wait()
	err = cmd.Wait()
	res.wall = time.Since(start)
	return res, start, err
}

// scanLinesOrCR splits at \n, \r\n or a lone \r (git's progress lines).
func scanLinesOrCR(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if atEOF && len(data) == 0 {
		return 0, nil, nil
	}
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		adv := i + 1
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			adv++
		} else if data[i] == '\r' && i+1 == len(data) && !atEOF {
			return 0, nil, nil // wait: \r\n may be split between reads
		}
		return adv, data[:i], nil
	}
	if atEOF {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// commandIn is a command with the bench's context.
func commandIn(ctx context.Context, dir string, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}
