package main

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// throughputRound is one round: the floor, then berth's push and pull.
type throughputRound struct {
	floor, push, pull time.Duration
}

func (r throughputRound) berth() time.Duration { return r.push + r.pull }

type throughputResult struct {
	rounds                []throughputRound
	saveOnly              time.Duration // docker save > /dev/null: what reading the image costs
	loadBefore, loadAfter string
}

// median is the round of median berth/floor ratio.
func (t throughputResult) median() throughputRound {
	rs := slices.Clone(t.rounds)
	slices.SortFunc(rs, func(a, b throughputRound) int {
		return cmpFloat(float64(a.berth())/float64(a.floor), float64(b.berth())/float64(b.floor))
	})
	return rs[len(rs)/2]
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// throughput copies the image from this machine's engine into the first
// engine of the bench's own, both ways, in rounds; each round starts with
// that engine empty and pushes into a repository of its own, so nothing
// is skipped as already there.
func (b *bench) throughput(ctx context.Context) (throughputResult, error) {
	res := throughputResult{loadBefore: loadavg()}
	e := b.engines[0]
	t0 := time.Now()
	if err := exec.CommandContext(ctx, "sh", "-c", "docker save "+b.image+" > /dev/null").Run(); err != nil {
		return res, fmt.Errorf("docker save: %w", err)
	}
	res.saveOnly = time.Since(t0)
	for i := range max(*rounds, 1) {
		var r throughputRound
		if err := e.empty(ctx); err != nil {
			return res, err
		}
		t0 := time.Now()
		load := fmt.Sprintf("docker save %s | docker -H unix://%s load -q", b.image, e.sock)
		if out, err := exec.CommandContext(ctx, "sh", "-c", load).CombinedOutput(); err != nil {
			return res, fmt.Errorf("%s: %v: %s", load, err, out)
		}
		r.floor = time.Since(t0)
		if err := e.empty(ctx); err != nil {
			return res, err
		}
		target := fmt.Sprintf("bench/throughput-%d:1", i+1)
		t0 = time.Now()
		if _, err := b.berth.CLI(ctx, "image", "push", b.image, "--as", target); err != nil {
			return res, err
		}
		r.push = time.Since(t0)
		t0 = time.Now()
		if _, err := dockerCLI(ctx, "--config", b.config, "-H", "unix://"+e.sock, "pull", "-q", b.berth.Addr+"/"+target); err != nil {
			return res, err
		}
		r.pull = time.Since(t0)
		logf("throughput round %d: save|load %s; berth image push %s + docker pull %s", i+1, secs(r.floor), secs(r.push), secs(r.pull))
		res.rounds = append(res.rounds, r)
	}
	res.loadAfter = loadavg()
	return res, e.empty(ctx)
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func roundsText(rs []throughputRound, f func(throughputRound) string) string {
	var parts []string
	for _, r := range rs {
		parts = append(parts, f(r))
	}
	return strings.Join(parts, " ")
}
