package main

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// life is one container's lifetime as the engine's events tell it.
type life struct {
	name                        string
	group                       string // "berth", "floor" or "" (someone else's)
	create, start, die, destroy time.Time
}

// engineEvents follows the Docker engine's container events from a given
// time on (docker events --since replays what came before it connected,
// so nothing is missed at the start).
type engineEvents struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error

	mu     sync.Mutex
	byID   map[string]*life
	events int
}

func watchEngine(since time.Time, cluster, runID string) (*engineEvents, error) {
	e := &engineEvents{byID: map[string]*life{}, done: make(chan struct{})}
	e.cmd = exec.Command("docker", "events", "--since", unixArg(since), "--filter", "type=container",
		"--format", `{{.TimeNano}}|{{.Action}}|{{.Actor.ID}}|{{index .Actor.Attributes "name"}}|{{index .Actor.Attributes "berth.cluster"}}|{{index .Actor.Attributes "`+floorLabel+`"}}`)
	stdout, err := e.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := e.cmd.Start(); err != nil {
		return nil, fmt.Errorf("docker events: %w", err)
	}
	go func() {
		defer close(e.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Split(sc.Text(), "|")
			if len(f) != 6 {
				continue
			}
			ns, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				continue
			}
			at := time.Unix(0, ns)
			e.mu.Lock()
			e.events++
			l := e.byID[f[2]]
			if l == nil {
				l = &life{name: f[3]}
				switch {
				case f[4] == cluster:
					l.group = "berth"
				case f[5] == runID:
					l.group = "floor"
				}
				e.byID[f[2]] = l
			}
			switch f[1] {
			case "create":
				l.create = at
			case "start":
				l.start = at
			case "die":
				l.die = at
			case "destroy":
				l.destroy = at
			}
			e.mu.Unlock()
		}
		e.err = sc.Err()
	}()
	return e, nil
}

// stop ends the docker events process (it runs until killed).
func (e *engineEvents) stop() {
	if e == nil {
		return
	}
	e.cmd.Process.Kill()
	e.cmd.Wait()
	<-e.done
}

// lives returns the containers of group that started at or after from.
func (e *engineEvents) lives(group string, from time.Time) []life {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []life
	for _, l := range e.byID {
		if l.group == group && !l.create.Before(from) && !l.create.IsZero() {
			out = append(out, *l)
		}
	}
	return out
}

// foreign counts containers other users of the engine created in [from, to].
func (e *engineEvents) foreign(from, to time.Time) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, l := range e.byID {
		if l.group == "" && !l.create.Before(from) && !l.create.After(to) {
			n++
		}
	}
	return n
}

// removal is, per container that has both, the time from its exit (die)
// to its removal (destroy).
func removal(ls []life) (ds []time.Duration, missing int) {
	for _, l := range ls {
		if l.die.IsZero() || l.destroy.IsZero() {
			missing++
			continue
		}
		ds = append(ds, l.destroy.Sub(l.die))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds, missing
}

// maxRunning is the most containers running (start to die) at one time.
func maxRunning(ls []life) int {
	type edge struct {
		at time.Time
		d  int
	}
	var edges []edge
	for _, l := range ls {
		if l.start.IsZero() {
			continue
		}
		edges = append(edges, edge{l.start, 1})
		if !l.die.IsZero() {
			edges = append(edges, edge{l.die, -1})
		}
	}
	// At one instant, an exit counts before a start.
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at.Equal(edges[j].at) {
			return edges[i].d < edges[j].d
		}
		return edges[i].at.Before(edges[j].at)
	})
	n, most := 0, 0
	for _, e := range edges {
		n += e.d
		most = max(most, n)
	}
	return most
}

func unixArg(t time.Time) string { return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond()) }

// waitNoContainers polls docker ps until no container carries label; it
// returns when that was first seen.
func waitNoContainers(ctx context.Context, label string, timeout time.Duration) (time.Time, int, error) {
	deadline := time.Now().Add(timeout)
	for {
		out, err := docker(ctx, "ps", "-aq", "--filter", "label="+label)
		at := time.Now()
		if err != nil {
			return at, -1, err
		}
		n := len(strings.Fields(out))
		if n == 0 {
			return at, 0, nil
		}
		if at.After(deadline) {
			return at, n, nil
		}
		select {
		case <-ctx.Done():
			return at, n, ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}
