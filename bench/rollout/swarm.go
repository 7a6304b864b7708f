package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Docker Swarm on this machine's engine: a single-node swarm the bench
// makes and leaves (docker swarm leave --force) at the end, on failure
// and on Ctrl-C. Tasks publish their port in host mode (a port per task
// on the host, no ingress routing mesh, which needs IPVS), so the probe
// reaches each task's container as it reaches berth's.

const gwBridge = "docker_gwbridge"

// swarmInit makes the swarm; it refuses an engine that is in one already
// (someone else's: the bench would leave it at the end).
func (b *bench) swarmInit(ctx context.Context) error {
	state, err := docker(ctx, "info", "--format", "{{.Swarm.LocalNodeState}}")
	if err != nil {
		return err
	}
	if state != "inactive" {
		return fmt.Errorf("this Docker engine is in a swarm already (state %q): the bench makes a swarm of its own and leaves it at the end; "+
			"leave it first (docker swarm leave --force) if it is a leftover", state)
	}
	_, err = docker(ctx, "network", "inspect", gwBridge)
	b.gwBridgeBefore = err == nil
	logf("docker swarm init --advertise-addr 127.0.0.1")
	if _, err := docker(ctx, "swarm", "init", "--advertise-addr", "127.0.0.1"); err != nil {
		return err
	}
	b.swarmOn = true
	return nil
}

// swarmLeave removes the service and leaves the swarm, and removes the
// bridge the swarm made if it was not there before.
func (b *bench) swarmLeave(ctx context.Context) {
	if !b.swarmOn {
		return
	}
	docker(ctx, "service", "rm", b.service)
	if _, err := docker(ctx, "swarm", "leave", "--force"); err != nil {
		logf("cleanup: %v", err)
		return
	}
	b.swarmOn = false
	if !b.gwBridgeBefore {
		// Its endpoints go a moment after the swarm: retry a few times.
		for range 10 {
			if _, err := docker(ctx, "network", "rm", gwBridge); err == nil || !strings.Contains(err.Error(), "active endpoints") {
				break
			}
			sleep(ctx, time.Second)
		}
	}
	logf("left the swarm")
}

func (b *bench) swarmLabels(extra ...string) []string {
	return append([]string{"com.docker.swarm.service.name=" + b.service}, extra...)
}

// swarmRound: docker service create of the replicas, then docker service
// update --image to demo:2 with Swarm's update defaults (parallelism 1,
// stop-first, delay 0), then docker service rm.
func (b *bench) swarmRound(ctx context.Context, round int, r *roundResult) error {
	logf("round %d: docker service create --replicas %d (demo:1)", round, b.replicas)
	args := []string{"service", "create", "--detach", "--no-resolve-image", "--name", b.service,
		"--replicas", strconv.Itoa(b.replicas), "--publish", "mode=host,target=8080",
		"--container-label", "berth-bench.run=" + b.runID}
	args = append(args, b.swarmLimits()...)
	m, err := b.dockerPhase(ctx, "swarm create", "version=1", b.swarmLabels("berth.demo.version=1"), args, "berth/demo:1")
	if err != nil {
		return err
	}
	r.swarmCreate = m
	if err := b.swarmSettle(ctx, "1"); err != nil {
		return err
	}

	logf("round %d: docker service update --image berth/demo:2 (update defaults: parallelism 1, stop-first)", round)
	if r.swarmUpdate, err = b.dockerPhase(ctx, "swarm update", "version=2", b.swarmLabels("berth.demo.version=2"),
		[]string{"service", "update", "--detach", "--no-resolve-image", "--image", "berth/demo:2"}, b.service); err != nil {
		return err
	}
	if err := b.swarmSettle(ctx, "2"); err != nil {
		return err
	}

	logf("round %d: docker service rm", round)
	if _, err := docker(ctx, "service", "rm", b.service); err != nil {
		return err
	}
	return waitGone(ctx, b.eng, 90*time.Second, b.swarmLabels()...)
}

// swarmLimits gives Swarm's tasks what berth gives its containers.
func (b *bench) swarmLimits() []string {
	if b.bare {
		return nil
	}
	return []string{"--init", "--limit-cpu", cpuDocker, "--limit-memory", memDocker, "--limit-pids", pidsDocker}
}

func (b *bench) swarmSettle(ctx context.Context, version string) error {
	if err := waitSettled(ctx, b.eng, b.replicas, phaseLimit, "berth.demo.version="+version, b.swarmLabels()...); err != nil {
		return fmt.Errorf("swarm: %w", err)
	}
	return sleep(ctx, settle)
}

// dockerPhase runs one docker command (args then last) and measures it
// from outside like berthPhase.
func (b *bench) dockerPhase(ctx context.Context, name, version string, probeLabels, args []string, last string) (*measurement, error) {
	m := &measurement{name: name, load0: loadavg()}
	cs := b.cpuSet(nil)
	c0 := cs.read()
	m.t0 = time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := docker(ctx, append(args, last)...)
		m.cli = time.Since(m.t0)
		if err != nil {
			errc <- err
		}
		close(errc)
	}()
	ans, err := waitAnswering(ctx, b.eng, b.replicas, phaseLimit, errc, probeLabels...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	m.answers, m.took = ans, ans.last().Sub(m.t0)
	m.cpu = cs.since(c0)
	for err := range errc {
		return nil, err
	}
	m.t1, m.load1 = time.Now(), loadavg()
	logf("%s: all %d answered after %.2fs (docker %s returned after %.2fs)", name, b.replicas, m.took.Seconds(), args[0]+" "+args[1], m.cli.Seconds())
	return m, nil
}

// ---- the floor: docker run -d, floorParallel at a time ----

// floorRound starts the replicas with docker run -d, floorParallel at a
// time, with berth's limits and init (or, bare, with neither), until all
// answer; then docker rm -f.
func (b *bench) floorRound(ctx context.Context, round int, bare bool) (*measurement, error) {
	name, label := "floor", "berth-bench.floor="+b.runID
	args := []string{"run", "-d", "-p", "127.0.0.1::8080", "--label", "berth-bench.run=" + b.runID}
	if bare {
		name, label = "floor bare", "berth-bench.floor-bare="+b.runID
	} else {
		args = append(args, "--init", "--cpus", cpuDocker, "-m", memDocker, "--pids-limit", pidsDocker)
	}
	args = append(args, "--label", label, "berth/demo:1")
	logf("round %d: %s: %d x docker %s, %d at a time", round, name, b.replicas, strings.Join(args, " "), floorParallel)
	m := &measurement{name: name, load0: loadavg()}
	var mu sync.Mutex
	var ids []string
	cs := b.cpuSet(nil)
	c0 := cs.read()
	m.t0 = time.Now()
	errc := make(chan error, 1)
	go func() {
		jobs := make(chan int)
		var wg sync.WaitGroup
		var first error
		for range floorParallel {
			wg.Go(func() {
				for range jobs {
					id, err := docker(ctx, args...)
					mu.Lock()
					if id != "" {
						ids = append(ids, id)
					}
					if err != nil && first == nil {
						first = err
					}
					mu.Unlock()
				}
			})
		}
		for i := range b.replicas {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
		m.cli = time.Since(m.t0)
		if first != nil {
			errc <- first
		}
		close(errc)
	}()
	ans, err := waitAnswering(ctx, b.eng, b.replicas, phaseLimit, errc, label)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	m.answers, m.took = ans, ans.last().Sub(m.t0)
	m.cpu = cs.since(c0)
	for err := range errc {
		return nil, err
	}
	m.t1, m.load1 = time.Now(), loadavg()
	logf("%s: all %d answered after %.2fs (the last docker run returned after %.2fs)", name, b.replicas, m.took.Seconds(), m.cli.Seconds())
	if err := sleep(ctx, settle); err != nil {
		return nil, err
	}
	if _, err := docker(ctx, append([]string{"rm", "-f"}, ids...)...); err != nil {
		return nil, err
	}
	return m, waitGone(ctx, b.eng, 60*time.Second, label)
}
