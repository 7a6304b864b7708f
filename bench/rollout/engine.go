package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// engine talks to this machine's Docker engine over its socket: the list
// of containers the probe polls and the stream of container events the
// breakdown is made from. The docker CLI is used for everything else,
// as a user would.
type engine struct {
	hc     *http.Client // list calls: short timeout
	stream *http.Client // events: no timeout

	mu     sync.Mutex
	events []dockerEvent
	keep   func(attrs map[string]string) bool
}

type ctr struct {
	ID     string            `json:"Id"`
	Names  []string          `json:"Names"`
	Labels map[string]string `json:"Labels"`
	State  string            `json:"State"`
	Ports  []struct {
		IP          string `json:"IP"`
		PrivatePort int    `json:"PrivatePort"`
		PublicPort  int    `json:"PublicPort"`
		Type        string `json:"Type"`
	} `json:"Ports"`
}

// addr is where the container's port 8080 is published, on loopback.
func (c ctr) addr() string {
	for _, p := range c.Ports {
		if p.PrivatePort == 8080 && p.PublicPort != 0 && p.Type == "tcp" {
			return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.PublicPort))
		}
	}
	return ""
}

type dockerEvent struct {
	At     time.Time
	Action string // create, start, kill, die, destroy ...
	ID     string
	Attrs  map[string]string // the container's labels, name, image, signal, exitCode
}

func dockerSocket() string {
	if h := os.Getenv("DOCKER_HOST"); strings.HasPrefix(h, "unix://") {
		return strings.TrimPrefix(h, "unix://")
	}
	return "/var/run/docker.sock"
}

func newEngine() *engine {
	sock := dockerSocket()
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	return &engine{
		hc:     &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 4}},
		stream: &http.Client{Transport: &http.Transport{DialContext: dial}},
	}
}

func filterArg(m map[string][]string) string {
	b, _ := json.Marshal(m)
	return url.QueryEscape(string(b))
}

// list returns the running containers that carry every label (k=v).
func (e *engine) list(ctx context.Context, labels ...string) ([]ctr, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://docker/containers/json?filters="+
		filterArg(map[string][]string{"label": labels, "status": {"running"}}), nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("docker list: HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	var out []ctr
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// countAll counts the containers (running or not) that carry every label.
func (e *engine) countAll(ctx context.Context, labels ...string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://docker/containers/json?all=1&filters="+
		filterArg(map[string][]string{"label": labels}), nil)
	if err != nil {
		return 0, err
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var out []ctr
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, err
	}
	return len(out), nil
}

// record follows the engine's container events until ctx ends, keeping
// those keep accepts (the bench's own containers).
func (e *engine) record(ctx context.Context, keep func(map[string]string) bool) error {
	e.keep = keep
	req, err := http.NewRequestWithContext(ctx, "GET", "http://docker/events?filters="+
		filterArg(map[string][]string{"type": {"container"}}), nil)
	if err != nil {
		return err
	}
	resp, err := e.stream.Do(req)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		return fmt.Errorf("docker events: HTTP %d", resp.StatusCode)
	}
	go func() {
		defer resp.Body.Close()
		dec := json.NewDecoder(bufio.NewReader(resp.Body))
		for {
			var m struct {
				Action string `json:"Action"`
				Actor  struct {
					ID         string            `json:"ID"`
					Attributes map[string]string `json:"Attributes"`
				} `json:"Actor"`
				TimeNano int64 `json:"timeNano"`
			}
			if err := dec.Decode(&m); err != nil {
				return
			}
			if !e.keep(m.Actor.Attributes) {
				continue
			}
			action, _, _ := strings.Cut(m.Action, ":") // "exec_start: sh" and the like
			e.mu.Lock()
			e.events = append(e.events, dockerEvent{At: time.Unix(0, m.TimeNano), Action: action, ID: m.Actor.ID, Attrs: m.Actor.Attributes})
			e.mu.Unlock()
		}
	}()
	return nil
}

// between returns the recorded events from t0 to t1 that match.
func (e *engine) between(t0, t1 time.Time, match func(dockerEvent) bool) []dockerEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []dockerEvent
	for _, ev := range e.events {
		if !ev.At.Before(t0) && !ev.At.After(t1) && match(ev) {
			out = append(out, ev)
		}
	}
	return out
}

// docker runs the docker CLI; stdout trimmed, stderr in the error.
func docker(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(stdout.String()), fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}
