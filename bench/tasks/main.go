// Command tasks benchmarks berth's task queue in one run on this machine:
//
//   - 300 tasks of `berth/busybox:1 true` through `berth up`, 4 at a time (a
//     queue with concurrency 4, the 300 submitted in one batch request),
//     against the floor of the same 300 `docker run --rm` under `xargs -P 4`;
//   - container removal: from each task container's exit (Docker's die
//     event) until it is gone (destroy), beside docker run --rm's own;
//   - queue overhead alone: 20,000 tasks through the real API, embedded
//     etcd, controllers and agent in one process, on the fake runtime whose
//     containers exit 0 at once (the median of 3 runs: on a shared 2-CPU
//     machine one run of a few seconds is noisy).
//
// bench/run.sh (make bench) builds berth and runs it:
//
//	go run ./bench/tasks [-berth path/to/berth] [-out bench/tasks-results.txt] [-mode all|docker|queue] [-rounds 3] [-cpuprofile f] [-trace f]
//
// The queue part runs in child processes (this program with -mode queue
// -child), so that the peak RSS it reports is the queue part's alone.
// -cpuprofile and -trace record its first run, to see where the time goes.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

var (
	berthBin   = flag.String("berth", "", "berth binary (default: go build ./cmd/berth into a temporary dir)")
	out        = flag.String("out", "", "write the results here too (run.sh: bench/tasks-results.txt)")
	mode       = flag.String("mode", "all", "all, docker (berth up against docker run) or queue (in-process queue overhead)")
	keep       = flag.Bool("keep", false, "keep the temporary dir (berth's log and data) after the run")
	nTasks     = flag.Int("n", 300, "tasks of the Docker comparison")
	parallel   = flag.Int("parallel", 4, "tasks at once in the Docker comparison (queue concurrency, xargs -P)")
	queueN     = flag.Int("queue-n", 20000, "tasks of the in-process queue bench")
	rounds     = flag.Int("rounds", 3, "runs of the in-process queue bench, each in a fresh process and store (the median is reported)")
	batch      = flag.Int("batch", 1000, "tasks per submit request of the in-process queue bench")
	cpuProfile = flag.String("cpuprofile", "", "write a CPU profile of the in-process queue run here")
	traceOut   = flag.String("trace", "", "write an execution trace of the in-process queue run here (go tool trace)")
	asChild    = flag.Bool("child", false, "internal: -mode queue prints its result as JSON on stdout")
)

const (
	ratioTarget    = 1.2
	queueTarget    = 5000.0 // tasks/s
	benchImage     = "berth/busybox:1"
	benchQueue     = "bench"
	floorLabel     = "berth-tasks-bench.run"
	pollEvery      = 50 * time.Millisecond
	containersGone = 60 * time.Second // how long task containers may linger after the last task ended
)

func main() {
	flag.Parse()
	os.Exit(run())
}

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	wallStart := time.Now()

	if *mode == "queue" && *asChild {
		res, err := runQueue(ctx, *queueN, *batch, *cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench tasks: queue:", err)
			return 1
		}
		json.NewEncoder(os.Stdout).Encode(res)
		return 0
	}

	r := &report{}
	switch *mode {
	case "all", "queue":
		var runs []*queueResult
		for i := range max(*rounds, 1) {
			res, err := queueInChild(ctx, i == 0)
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench tasks: FAILED: queue:", err)
				return 1
			}
			runs = append(runs, res)
		}
		r.queue = medianRun(runs)
	default:
		if *mode != "docker" {
			fmt.Fprintf(os.Stderr, "bench tasks: -mode %q: use all, docker or queue\n", *mode)
			return 2
		}
	}
	if *mode == "all" || *mode == "docker" {
		res, code := runDocker(ctx)
		if code != 0 {
			return code
		}
		r.docker = res
	}
	r.wall = time.Since(wallStart)
	text := r.render(ctx)
	fmt.Print("\n" + text)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench tasks:", err)
			return 1
		}
		fmt.Printf("written to %s\n", *out)
	}
	return 0
}

// queueInChild runs this program with -mode queue -child and reads its
// result: a process of its own, so that the peak RSS is the queue part's.
// The first run gets the -cpuprofile and -trace, if any.
func queueInChild(ctx context.Context, first bool) (*queueResult, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"-mode", "queue", "-child", "-queue-n", fmt.Sprint(*queueN), "-batch", fmt.Sprint(*batch)}
	if *cpuProfile != "" && first {
		args = append(args, "-cpuprofile", *cpuProfile)
	}
	if *traceOut != "" && first {
		args = append(args, "-trace", *traceOut)
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -mode queue: %w", self, err)
	}
	var res queueResult
	if err := json.Unmarshal(stdout, &res); err != nil {
		return nil, fmt.Errorf("%s -mode queue: its result: %w: %q", self, err, stdout)
	}
	// The kernel's account of the child's peak RSS, beside its own.
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.ChildMaxRSSMiB = float64(ru.Maxrss) / 1024
	}
	return &res, nil
}

// medianRun is the run of median throughput, knowing the others' rates
// and the highest peak RSS of all.
func medianRun(runs []*queueResult) *queueResult {
	sorted := slices.Clone(runs)
	slices.SortFunc(sorted, func(a, b *queueResult) int { return cmp.Compare(a.rate(), b.rate()) })
	m := sorted[len(sorted)/2]
	m.Rounds = nil
	for _, r := range runs {
		m.Rounds = append(m.Rounds, r.rate())
		m.References = append(m.References, r.Reference)
		m.MaxPeakRSSMiB = max(m.MaxPeakRSSMiB, r.PeakRSSMiB, r.ChildMaxRSSMiB)
	}
	return m
}

var benchStart = time.Now()

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(benchStart).Seconds(), fmt.Sprintf(format, args...))
}

func loadavg() string {
	load, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(load)); len(f) > 0 {
		return f[0]
	}
	return "?"
}
