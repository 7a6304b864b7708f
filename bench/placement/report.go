package main

import (
	"fmt"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"

	"berth/bench/internal/measure"
)

func render(results []*result, failures []string, wall time.Duration) string {
	var w strings.Builder
	rev, _ := exec.Command("git", "describe", "--always", "--dirty").Output()
	fmt.Fprintf(&w, "berth placement bench  %s  nproc %d  berth %s  (wall time %.0fs)\n",
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), strings.TrimSpace(string(rev)), wall.Seconds())
	fmt.Fprintf(&w, "real server in one process (embedded etcd, API on loopback, app and task controllers); simulated nodes, no Docker\n")
	fmt.Fprintf(&w, "committed = the instance's node written in the store; target >= %.0f committed/s (Nomad C1M: 1,000,000 on 5,000 hosts in < 5 min)\n\n", target)
	fmt.Fprintf(&w, "  %-24s %10s %9s %9s %10s %12s %9s %14s\n", "run", "placed in", "placed/s", "x target", "acked in", "peak RSS", "CPU", "heartbeat/TTL")
	for _, r := range results {
		rate := float64(r.Instances) / r.Placed.Seconds()
		fmt.Fprintf(&w, "  %-24s %9.1fs %9.0f %9.2f %9.1fs %8.0f MiB %8.0fs %14s  %s\n",
			fmt.Sprintf("%d on %d nodes", r.Instances, r.Nodes), r.Placed.Seconds(), rate, rate/target,
			r.Acked.Seconds(), max(r.PeakRSSMiB, r.ChildMaxRSSMiB), r.CPU.Seconds(), r.Heartbeat.String()+"/"+r.NodeTTL.String(), mark(rate >= target))
	}
	for _, f := range failures {
		fmt.Fprintf(&w, "  %s\n", f)
	}
	fmt.Fprintf(&w, "\ndetails:\n")
	for _, r := range results {
		for _, d := range r.details() {
			fmt.Fprintf(&w, "- %s\n", d)
		}
	}
	return w.String()
}

func (r *result) details() []string {
	name := fmt.Sprintf("%d/%d", r.Instances, r.Nodes)
	per := func(m map[string]float64, k string) string { return fmt.Sprintf("%.2f", m[k]/float64(r.Instances)) }
	etcd := func(m map[string]float64) string {
		return fmt.Sprintf("%s puts, %s txns, %s ranges, %s raft proposals", per(m, "mvcc_put_total"),
			per(m, "mvcc_txn_total"), per(m, "mvcc_range_total"), per(m, "server_proposals_applied_total"))
	}
	var reqs []string
	for k, v := range r.Requests {
		reqs = append(reqs, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(reqs)
	quarters := func(stage int) string {
		q := r.Quarters[stage]
		return fmt.Sprintf("+%s (25%%), +%s (50%%), +%s (75%%), +%s (all)", ms(q[0]), ms(q[1]), ms(q[2]), ms(q[3]))
	}
	d := []string{
		fmt.Sprintf("%s: %d apps of about %d replicas (cpu 10m, memory 4Mi each; a quarter each: constraint zone != c with spread zone, spread zone, spread per node, binpack with max_per_node 10 or more) on %d nodes of 16 CPUs and 64Gi in %d zones",
			name, r.Apps, r.Instances/r.Apps, r.Nodes, r.Zones),
		fmt.Sprintf("%s: setup (agent tokens, registrations, watches) %.1fs; the %d deploy requests (8 at a time) took %.1fs; %s",
			name, r.Setup.Seconds(), r.Apps, r.Deploy.Seconds(), r.Load),
		fmt.Sprintf("%s: created in the store by %s; %d instance records in all (%d replacements: instances lost with a node that missed its heartbeat TTL are replaced)",
			name, quarters(created), r.Created, r.Created-r.Instances),
		fmt.Sprintf("%s: placed and committed by %s: %.0f/s, %.2f x the target", name, quarters(placed),
			float64(r.Instances)/r.Placed.Seconds(), float64(r.Instances)/r.Placed.Seconds()/target),
		fmt.Sprintf("%s: acknowledged (reported running by the simulated nodes, one PUT each) by %s: %.0f/s from the deploy",
			name, quarters(acked), float64(r.Instances)/r.Acked.Seconds()),
		fmt.Sprintf("%s: CPU time %.1fs until all placed, %.1fs until all acknowledged (%s per instance; %d CPUs); the process holds the server, its etcd, the simulated nodes and the bench's own watch",
			name, r.CPUPlaced.Seconds(), r.CPU.Seconds(), ms(r.CPU/time.Duration(r.Instances)), runtime.NumCPU()),
		fmt.Sprintf("%s: peak RSS %.0f MiB (getrusage; %.0f MiB as the parent saw it): server, embedded etcd, simulated nodes and the bench's watch together; Go heap in use at the end %.0f MiB; etcd database %.0f MiB",
			name, r.PeakRSSMiB, r.ChildMaxRSSMiB, r.HeapMiB, r.DBMiB),
		fmt.Sprintf("%s: etcd per instance until all placed: %s", name, etcd(r.EtcdPlaced)),
		fmt.Sprintf("%s: etcd per instance until all acknowledged: %s", name, etcd(r.Etcd)),
		fmt.Sprintf("%s: etcd disk: %s", name, r.Fsync),
		fmt.Sprintf("%s: API requests from the deploy on: %s; %d TCP connections accepted", name, strings.Join(reqs, ", "), r.Conns),
		fmt.Sprintf("%s: nodes heartbeat every %s (server node TTL %s): %d heartbeats during the run; %d reports by %d workers; %d watch streams ended (the node listed again); %d failed requests",
			name, r.Heartbeat, r.NodeTTL, r.Heartbeats, r.Reported, r.Workers, r.WatchEnds, r.Failed),
	}
	if r.LastErr != "" {
		d = append(d, fmt.Sprintf("%s: last error of a simulated node: %s", name, r.LastErr))
	}
	if r.Warnings != "" {
		d = append(d, fmt.Sprintf("%s: server warnings/errors: %s", name, r.Warnings))
	}
	if r.Profile != "" {
		d = append(d, fmt.Sprintf("%s: CPU profile in %s (go tool pprof -top %s)", name, r.Profile, r.Profile))
	}
	return d
}

func mark(ok bool) string {
	if ok {
		return "ok"
	}
	return "FAIL"
}

// ms prints a duration with the precision that matters at its size.
var ms = measure.Ms
