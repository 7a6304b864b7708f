// Command rollout measures berth's rolling update, rollback and deploy
// from nothing against Docker Swarm on this machine, in one run, side by
// side, with the same probe from outside:
//
//   - rolling update of 30 replicas from berth/demo:1 to berth/demo:2:
//     berth with the update defaults (parallel 1, max_unavailable 0) and
//     with parallel 5, under load through berth's gateway (failed requests
//     counted), against `docker service update --image` with Swarm's
//     defaults (parallelism 1, stop-first);
//   - `berth rollback` of it, to the revision just replaced;
//   - deploy from nothing of 30: `berth deploy`, `docker service create`
//     and the floor, `docker run -d` 4 at a time (with berth's limits and
//     init, and bare: neither);
//   - where berth's time goes: per replica, from the instance's "placed"
//     event to its container's create and start (the engine's events), to
//     its "healthy" event, to the controller's next step; the same for
//     Swarm's tasks.
//
// The probe lists the engine's running containers of the side (by label)
// and GETs / on each one's published port until all 30 of the wanted
// image answer 200. Every container, berth's, Swarm's and the floor's,
// gets berth's limits (cpu 50m, memory 32Mi, pids 512) and an init.
// Swarm runs on this machine's engine: `docker swarm init --advertise-addr
// 127.0.0.1`, tasks published in host mode; the bench leaves the swarm at
// the end, also on failure and on Ctrl-C. berth and Swarm alternate which
// goes first, round by round; the figures are medians of the rounds.
//
// bench/run.sh (make bench) builds berth and runs it:
//
//	go run ./bench/rollout [-berth path/to/berth] [-out bench/rollout-results.txt] [-rounds 2] [-keep] [-v]
//
// -compare path/to/other/berth measures a second berth binary (say, one
// built from before a change) in the same rounds, alternating with the
// first, for before/after figures; -only-berth leaves Swarm and the floor
// out of such a run.
//
// It needs the berth/demo:1 and :2 images (scripts/build-images.sh) and an
// engine that is in no swarm.
package main

import (
	"berth/bench/internal/measure"

	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"berth/api"
	"berth/bench/internal/berthup"
)

const (
	floorParallel = 4
	settle        = 2 * time.Second // between phases

	// berth's container limits (the spec's resources), given to Swarm and the floor too.
	cpuSpec, memSpec                 = "50m", "32Mi"
	cpuDocker, memDocker, pidsDocker = "0.05", "32m", "512"

	rollTarget, rollP5Target = 0.7, 0.25
	deployTarget             = 0.9
	rollbackTarget           = 0.2
)

type bench struct {
	tmp       string
	replicas  int
	runID     string
	service   string // Swarm's
	bare      bool   // Swarm without berth's limits and init
	onlyBerth bool   // no Swarm, no floor
	verbose   bool

	sides []*berthSide // the berth under test; and the one to compare with (-compare)
	eng   *engine

	swarmOn, gwBridgeBefore bool
	notes                   []string
}

// measurement is one phase of one side.
type measurement struct {
	name               string
	side               *berthSide // berth's phases
	t0, t1             time.Time
	took, cli, settled time.Duration // all answered; the command returned; only the new ones run (berth)
	rolledOut          time.Duration // berth's history said "rolled out"
	cpu                string        // CPU time of berth up, dockerd, containerd until all answered
	answers            answers
	load               loadCounts
	berthEvents        []api.Event
	load0, load1       string
}

type roundResult struct {
	order                    string
	berth                    []*berthResult // per side
	swarmCreate, swarmUpdate *measurement
	floor, floorBare         *measurement
}

func main() { os.Exit(run()) }

func run() (code int) {
	berthBin := flag.String("berth", "", "berth binary (default: go build ./cmd/berth into the temporary dir)")
	compare := flag.String("compare", "", "another berth binary (say, from before a change), measured in the same rounds, for before/after figures")
	out := flag.String("out", "", "write the results here too (run.sh: bench/rollout-results.txt)")
	keep := flag.Bool("keep", false, "keep the temporary dir (berth's log and data) after the run")
	rounds := flag.Int("rounds", 2, "rounds (berth and Swarm alternate which goes first); figures are medians")
	replicas := flag.Int("replicas", 30, "replicas of each side")
	bare := flag.Bool("swarm-bare", false, "Swarm's tasks without berth's limits and init")
	verbose := flag.Bool("v", false, "print every berth event of every phase")
	onlyBerth := flag.Bool("only-berth", false, "berth (and -compare) only: no Swarm, no floor (for before/after runs; no ratios to Swarm)")
	flag.Parse()

	start := time.Now()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tmp, err := os.MkdirTemp("", "berth-rollout-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench rollout:", err)
		return 1
	}
	b := &bench{tmp: tmp, replicas: *replicas, bare: *bare, verbose: *verbose, onlyBerth: *onlyBerth,
		sides:   []*berthSide{{label: "berth", bin: *berthBin, dir: filepath.Join(tmp, "berth")}},
		runID:   fmt.Sprintf("%d-%d", os.Getpid(), time.Now().Unix()),
		service: fmt.Sprintf("berth-rollout-bench-%d", os.Getpid()),
		eng:     newEngine()}
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintln(os.Stderr, "bench rollout: panic:", r)
			code = 2
		}
		b.cleanup()
		if *keep || code == 1 || code == 2 {
			fmt.Fprintf(os.Stderr, "bench rollout: kept %s (berth's logs: %s/*/berth.log)\n", tmp, tmp)
		} else {
			os.RemoveAll(tmp)
		}
	}()

	if *compare != "" {
		b.sides = append(b.sides, &berthSide{label: "compare", bin: *compare, dir: filepath.Join(tmp, "compare")})
	}
	results, err := b.all(ctx, *rounds)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench rollout: interrupted; cleaning up")
			return 130
		}
		fmt.Fprintln(os.Stderr, "bench rollout: FAILED:", err)
		b.printLogTail(30)
		return 1
	}
	text := b.render(ctx, results, time.Since(start))
	fmt.Print("\n" + text)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench rollout:", err)
			return 1
		}
		fmt.Printf("written to %s\n", *out)
	}
	return 0
}

func (b *bench) all(ctx context.Context, rounds int) ([]*roundResult, error) {
	for _, img := range []string{"berth/demo:1", "berth/demo:2"} {
		if _, err := docker(ctx, "image", "inspect", "--format", "{{.Id}}", img); err != nil {
			return nil, fmt.Errorf("%s is missing: run ./scripts/build-images.sh: %w", img, err)
		}
	}
	if b.sides[0].bin == "" {
		b.sides[0].bin = filepath.Join(b.tmp, "berth-bin")
		logf("building berth")
		build := exec.CommandContext(ctx, "go", "build", "-o", b.sides[0].bin, "./cmd/berth")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return nil, fmt.Errorf("go build ./cmd/berth (run from the repository root): %w", err)
		}
	}
	for _, s := range b.sides {
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return nil, err
		}
		var err error
		s.up, err = berthup.Start(ctx, s.bin, s.dir, logf)
		if err != nil {
			return nil, fmt.Errorf("%s (%s): %w", s.label, s.bin, err)
		}
		if err := s.waitNode(ctx); err != nil {
			return nil, err
		}
	}
	err := b.eng.record(ctx, func(a map[string]string) bool {
		for _, s := range b.sides {
			if a["berth.cluster"] == s.cluster {
				return true
			}
		}
		return a["berth-bench.run"] == b.runID || a["com.docker.swarm.service.name"] == b.service
	})
	if err != nil {
		return nil, err
	}
	if !b.onlyBerth {
		if err := b.swarmInit(ctx); err != nil {
			return nil, err
		}
	}
	var out []*roundResult
	for round := 1; round <= rounds; round++ {
		r := &roundResult{}
		type stepT struct {
			name string
			f    func() error
		}
		var steps []stepT
		for _, s := range b.sides {
			br := &berthResult{}
			r.berth = append(r.berth, br)
			steps = append(steps, stepT{s.label, func() error { return b.berthRound(ctx, round, s, br) }})
		}
		others := []stepT{
			{"swarm", func() error { return b.swarmRound(ctx, round, r) }},
			{"floor", func() (err error) { r.floor, err = b.floorRound(ctx, round, false); return err }},
			{"floor bare", func() (err error) { r.floorBare, err = b.floorRound(ctx, round, true); return err }},
		}
		if !b.onlyBerth {
			steps = append(steps, others...)
		}
		if round%2 == 0 {
			for i, j := 0, len(steps)-1; i < j; i, j = i+1, j-1 {
				steps[i], steps[j] = steps[j], steps[i]
			}
		}
		var names []string
		for _, s := range steps {
			names = append(names, s.name)
		}
		r.order = strings.Join(names, ", ")
		logf("round %d of %d: %s", round, rounds, r.order)
		for _, s := range steps {
			if err := s.f(); err != nil {
				return nil, fmt.Errorf("round %d, %s: %w", round, s.name, err)
			}
			if err := sleep(ctx, settle); err != nil {
				return nil, err
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// waitNode waits until berth's agent has registered its node as ready.
func (s *berthSide) waitNode(ctx context.Context) error {
	cl := s.up.Client()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := cl.Status(ctx)
		if err == nil && st.Cluster != "" {
			s.cluster = st.Cluster
			nodes, err := cl.ListNodes(ctx)
			if err == nil {
				for _, n := range nodes.Items {
					if n.State == "ready" {
						logf("%s ready: cluster %s, node %s", s.label, s.cluster, n.Name)
						return nil
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("berth: no node ready within 60s")
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// cleanup stops berth (so that its agent makes no container again), then
// removes every container of its cluster and of the floor, and leaves the
// swarm.
func (b *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	labels := []string{"berth-bench.run=" + b.runID}
	for _, s := range b.sides {
		s.up.Stop()
		if s.cluster != "" {
			labels = append(labels, "berth.cluster="+s.cluster)
		}
	}
	b.swarmLeave(ctx)
	for _, l := range labels {
		for attempt := 0; ; attempt++ {
			out, err := docker(ctx, "ps", "-aq", "--filter", "label="+l)
			if err != nil {
				logf("cleanup: %v", err)
				break
			}
			ids := strings.Fields(out)
			if len(ids) == 0 {
				break
			}
			if attempt == 10 {
				logf("cleanup: %d containers labelled %s are left: %s", len(ids), l, strings.Join(ids, " "))
				break
			}
			if attempt == 0 {
				logf("cleanup: removing %d containers labelled %s", len(ids), l)
			}
			docker(ctx, append([]string{"rm", "-f"}, ids...)...)
			sleep(ctx, time.Second)
		}
	}
}

func (b *bench) printLogTail(n int) {
	for _, s := range b.sides {
		s.printLogTail(n)
	}
}

func (s *berthSide) printLogTail(n int) {
	if s.up == nil {
		return
	}
	data, err := os.ReadFile(s.up.LogPath)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(os.Stderr, "bench rollout: last lines of %s:\n", s.up.LogPath)
	for _, l := range lines {
		fmt.Fprintln(os.Stderr, "    "+l)
	}
}

func (b *bench) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	b.notes = append(b.notes, s)
	logf("note: %s", s)
}

// The progress lines and load average every bench prints.
var (
	logf    = measure.Logf
	loadavg = measure.LoadAvg
)
