package main

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"

	"berth/api"

	"berth/bench/internal/measure"
)

type report struct {
	docker *dockerResult
	queue  *queueResult
	wall   time.Duration
}

func (r *report) render(ctx context.Context) string {
	var w strings.Builder
	engine, _ := docker(ctx, "version", "--format", "{{.Server.Version}}")
	rev, _ := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output()
	fmt.Fprintf(&w, "berth tasks bench  %s  docker %s  nproc %d  berth %s  (one run; wall time %.0fs)\n",
		time.Now().UTC().Format(time.RFC3339), engine, runtime.NumCPU(), strings.TrimSpace(string(rev)), r.wall.Seconds())
	var details []string
	if d := r.docker; d != nil {
		details = append(details, d.render(&w)...)
	}
	if q := r.queue; q != nil {
		details = append(details, q.render(&w)...)
	}
	fmt.Fprintf(&w, "\ndetails:\n")
	for _, s := range details {
		fmt.Fprintf(&w, "- %s\n", s)
	}
	return w.String()
}

func (d *dockerResult) render(w *strings.Builder) (details []string) {
	ratio := d.berth.Seconds() / d.floor.Seconds()
	fmt.Fprintf(w, "\n%d x %s true, %d at a time\n", d.n, benchImage, d.parallel)
	fmt.Fprintf(w, "  berth (queue concurrency %d, one batch submit)   %7.2fs   %6.2f tasks/s\n", d.parallel, d.berth.Seconds(), float64(d.n)/d.berth.Seconds())
	fmt.Fprintf(w, "  floor: docker run --rm, xargs -P %d              %7.2fs   %6.2f tasks/s\n", d.parallel, d.floor.Seconds(), float64(d.n)/d.floor.Seconds())
	disturbed := ""
	if d.foreign > 0 {
		disturbed = fmt.Sprintf("  (disturbed: others made %d containers meanwhile)", d.foreign)
	}
	fmt.Fprintf(w, "  ratio berth/floor (time)                        %7.2f    (target <= %.1f)  %s%s\n", ratio, ratioTarget, mark(ratio <= ratioTarget), disturbed)
	ok := d.states["succeeded"] == d.n && len(d.tasks) == d.n
	fmt.Fprintf(w, "  tasks succeeded %d of %d: %s; task containers left afterwards: %d  %s\n",
		d.states["succeeded"], d.n, mark(ok), d.leftCount, mark(d.leftCount == 0))

	berthRm, berthMissing := removal(d.berthLives)
	floorRm, floorMissing := removal(d.floorLives)
	fmt.Fprintf(w, "\ncontainer removal, container exit (die) -> gone (destroy), Docker events\n")
	fmt.Fprintf(w, "  berth tasks          median %s   p90 %s   (n=%d)\n", ms(pct(berthRm, 50)), ms(pct(berthRm, 90)), len(berthRm))
	fmt.Fprintf(w, "  docker run --rm      median %s   p90 %s   (n=%d; the floor's own removal, for comparison)\n", ms(pct(floorRm, 50)), ms(pct(floorRm, 90)), len(floorRm))

	details = append(details,
		fmt.Sprintf("berth: from the submit request to the bench seeing the last task ended, through %s; the batch POST of %d tasks took %s", d.ended, d.n, ms(d.submit)),
		fmt.Sprintf("berth: task states %v; %d task containers made (Docker create events), at most %d running at once (start..die); the last task container was gone %s after the last task ended (docker ps polled every %s)",
			d.states, len(d.berthLives), maxRunning(d.berthLives), ms(d.goneAfterLast), pollEvery),
		fmt.Sprintf("floor: %d containers made, at most %d running at once; xargs wall time from its start to its end", len(d.floorLives), maxRunning(d.floorLives)),
		fmt.Sprintf("berth tasks run with the default resources (cpu 100m, memory 128Mi: Docker cgroup limits); the floor's docker run has none"),
		fmt.Sprintf("berth per task (records, server clock): %s", strings.Join(d.stages(), "; ")),
		fmt.Sprintf("removal: die or destroy event missing for %d berth and %d floor containers; berth removal max %s, floor max %s",
			berthMissing, floorMissing, ms(pct(berthRm, 100)), ms(pct(floorRm, 100))),
		fmt.Sprintf("berth up peak RSS (VmHWM) %.1f MiB", d.berthHWM),
		"machine during the phases (this Docker engine and CPUs are shared): "+strings.Join(d.phases, "; "),
	)
	if d.warnings != "" {
		details = append(details, "berth log warnings/errors: "+d.warnings)
	}
	return append(details, d.notes...)
}

func mark(ok bool) string {
	if ok {
		return "ok"
	}
	return "FAIL"
}

// pct is the p-th percentile (nearest rank) of sorted durations.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(float64(len(ds))*p/100+0.5) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

func stats(ds []time.Duration) string {
	if len(ds) == 0 {
		return "(none)"
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return fmt.Sprintf("median %s, p90 %s, max %s (n=%d)", ms(pct(ds, 50)), ms(pct(ds, 90)), ms(pct(ds, 100)), len(ds))
}

// ms prints a duration with the precision that matters at its size.
var ms = measure.Ms

func (q *queueResult) render(w *strings.Builder) (details []string) {
	fmt.Fprintf(w, "\nqueue overhead, in-process (real API, embedded etcd, controllers and agent; fake runtime, containers exit 0 at once)\n")
	fmt.Fprintf(w, "  %d tasks   %7.2fs   %6.0f tasks/s   (target >= %.0f/s)  %s\n", q.N, q.Total.Seconds(), q.rate(), queueTarget, mark(q.rate() >= queueTarget && q.Succeeded == q.N))
	if len(q.Rounds) > 1 {
		var all []string
		for i, r := range q.Rounds {
			all = append(all, fmt.Sprintf("%.0f (ref %s)", r, ms(q.References[i])))
		}
		fmt.Fprintf(w, "  median of %d runs, each in a fresh process and store (tasks/s: %s); the figures below are the median run's\n", len(q.Rounds), strings.Join(all, ", "))
	}
	fmt.Fprintf(w, "  succeeded %d of %d; peak RSS of the process %.0f MiB (highest of the runs: %.0f MiB)\n", q.Succeeded, q.N, q.PeakRSSMiB, max(q.MaxPeakRSSMiB, q.PeakRSSMiB))
	perTask := q.CPU / time.Duration(q.N)
	fmt.Fprintf(w, "  CPU time %.1fs (%s per task: at most %.0f tasks/s on %d CPUs with nothing else running)\n",
		q.CPU.Seconds(), ms(perTask), float64(runtime.NumCPU())/perTask.Seconds(), runtime.NumCPU())

	per := func(k string) string { return fmt.Sprintf("%.2f", q.Etcd[k]/float64(q.N)) }
	var reqs []string
	for k, v := range q.Requests {
		reqs = append(reqs, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(reqs)
	details = append(details,
		fmt.Sprintf("queue: %d submit requests of %d took %.2fs (%.0f tasks/s enqueued); the run is from the first submit to the last task seen ended by a store watch of the bench's own in the process (one more watcher, beside the task controller's and the agent's; it decodes only each change's state and times); task states %v, %d attempts; %s",
			(q.N+q.Batch-1)/q.Batch, q.Batch, q.Enqueue.Seconds(), float64(q.N)/q.Enqueue.Seconds(), q.States, q.Attempts, q.Load),
		fmt.Sprintf("queue: etcd per task: %s raft proposals applied, %s txns, %s puts, %s ranges, %s deletes (etcd's own counters over the run)",
			per("server_proposals_applied_total"), per("mvcc_txn_total"), per("mvcc_put_total"), per("mvcc_range_total"), per("mvcc_delete_total")),
		fmt.Sprintf("queue: API requests during the run: %s; %d TCP connections accepted", strings.Join(reqs, ", "), q.Conns),
		fmt.Sprintf("queue: ended by +%s (25%%), +%s (50%%), +%s (75%%), +%s (all)", ms(q.Quarters[0]), ms(q.Quarters[1]), ms(q.Quarters[2]), ms(q.Quarters[3])),
		"queue: per task (records, except the last): "+strings.Join(q.Stages, "; "),
		"queue: etcd disk: "+q.Fsync,
		fmt.Sprintf("queue: CPU speed reference just before the run: 20,000 JSON round trips of a task record on one CPU took %s (this VM's CPUs are not always equally fast: compare runs by it)", ms(q.Reference)),
		fmt.Sprintf("queue: tasks ask cpu 1m, memory %s; the fake node offers 100000 CPUs and 1 PiB, so placement is not the limit; agent workers 32", api.Bytes(api.MinMemory)),
	)
	if q.ChildMaxRSSMiB > 0 {
		details = append(details, fmt.Sprintf("queue: peak RSS %.0f MiB as the process saw it (getrusage), %.0f MiB as its parent saw it; it includes the embedded etcd", q.PeakRSSMiB, q.ChildMaxRSSMiB))
	}
	if q.Profile != "" {
		details = append(details, "queue: CPU profile in "+q.Profile+" (go tool pprof -top "+q.Profile+")")
	}
	if q.Warnings != "" {
		details = append(details, "queue: warnings/errors logged: "+q.Warnings)
	}
	return details
}
