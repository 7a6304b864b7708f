package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"

	"berth/bench/internal/measure"
)

func (m *measurement) loadText() string {
	if m.load.total == 0 {
		return ""
	}
	return "; gateway load: " + m.load.text()
}

func (c loadCounts) text() string {
	s := fmt.Sprintf("%d requests, %d failed (%d connection errors, %d non-200), %d answered version=2", c.total, c.failed(), c.errs, c.non200, c.v2)
	if len(c.first) > 0 {
		s += "; first failures: " + strings.Join(c.first, "; ")
	}
	return s
}

// median of one measurement over the rounds.
func median(rs []*roundResult, pick func(*roundResult) *measurement) time.Duration {
	var ds []time.Duration
	for _, r := range rs {
		if m := pick(r); m != nil {
			ds = append(ds, m.took)
		}
	}
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	if len(ds)%2 == 0 {
		return (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
	}
	return ds[len(ds)/2]
}

func perRound(rs []*roundResult, pick func(*roundResult) *measurement) string {
	var parts []string
	for _, r := range rs {
		if m := pick(r); m != nil {
			parts = append(parts, fmt.Sprintf("%.2f", m.took.Seconds()))
		}
	}
	return strings.Join(parts, ", ")
}

func failedTotal(rs []*roundResult, pick func(*roundResult) *measurement) (failed, total int) {
	for _, r := range rs {
		if m := pick(r); m != nil {
			failed += m.load.failed()
			total += m.load.total
		}
	}
	return failed, total
}

func mark(ratio, target float64) string {
	if ratio == 0 {
		return "(not measured)"
	}
	if ratio <= target {
		return "ok"
	}
	return "ABOVE TARGET"
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return a.Seconds() / b.Seconds()
}

type pick func(*roundResult) *measurement

func side(i int, f func(*berthResult) *measurement) pick {
	return func(r *roundResult) *measurement { return f(r.berth[i]) }
}

func (b *bench) render(ctx context.Context, rs []*roundResult, wall time.Duration) string {
	var w strings.Builder
	engine, _ := docker(ctx, "version", "--format", "{{.Server.Version}}")
	rev, _ := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output()
	n := b.replicas
	fmt.Fprintf(&w, "berth rollout bench  %s  docker %s  nproc %d  berth %s  (one run, %d rounds; wall time %.0fs)\n",
		time.Now().UTC().Format(time.RFC3339), engine, runtime.NumCPU(), strings.TrimSpace(string(rev)), len(rs), wall.Seconds())
	limits := fmt.Sprintf("cpu %s, memory %s, pids %s, an init (berth's defaults but cpu and memory; --cpus %s -m %s --pids-limit %s --init for the floor, --limit-cpu/--limit-memory/--limit-pids/--init for Swarm)",
		cpuSpec, memSpec, pidsDocker, cpuDocker, memDocker, pidsDocker)
	if b.bare {
		limits += "; Swarm's tasks without them (-swarm-bare)"
	}
	fmt.Fprintf(&w, "%d replicas of berth/demo; every container: %s.\n", n, limits)
	fmt.Fprintf(&w, "Ready = every container of the wanted image answers GET / with 200 on its published port, probed from outside the same way on every side\n"+
		"(the engine's list of running containers every %s, a fresh GET every %s per container); times from just before the command.\n", listEvery, probeEvery)
	fmt.Fprintf(&w, "berth: HTTP health check (GET /healthz, its defaults); Swarm: none (the image is FROM scratch, there is no shell for --health-cmd); the outside probe is what is compared.\n")
	fmt.Fprintf(&w, "berth's runs: load through its gateway (%d keep-alive clients, GET / every %s each), failed requests counted.\n", loadConns, loadEvery)
	for _, s := range b.sides {
		fmt.Fprintf(&w, "%s = %s\n", s.label, s.bin)
	}
	fmt.Fprintf(&w, "Medians of %d rounds; berth and Swarm alternate which goes first (round orders: %s).\n\n", len(rs), roundOrders(rs))

	swarmUpd := median(rs, func(r *roundResult) *measurement { return r.swarmUpdate })
	perRep := func(d time.Duration) float64 { return d.Seconds() / float64(n) }
	fmt.Fprintf(&w, "rolling update %d, demo:1 -> demo:2\n", n)
	fmt.Fprintf(&w, "  %-60s %7.2fs  %5.2f s/replica\n", "swarm    docker service update (parallelism 1, stop-first)", swarmUpd.Seconds(), perRep(swarmUpd))
	for i, s := range b.sides {
		roll := median(rs, side(i, func(x *berthResult) *measurement { return x.roll }))
		f, t := failedTotal(rs, side(i, func(x *berthResult) *measurement { return x.roll }))
		rr := ratio(roll, swarmUpd)
		fmt.Fprintf(&w, "  %-60s %7.2fs  %5.2f s/replica  ratio to swarm %.2f (target <= %.2f) %s   failed requests %d/%d\n",
			s.label+"  update defaults (parallel 1, max_unavailable 0)", roll.Seconds(), perRep(roll), rr, rollTarget, mark(rr, rollTarget), f, t)
		p5 := median(rs, side(i, func(x *berthResult) *measurement { return x.rollP5 }))
		f, t = failedTotal(rs, side(i, func(x *berthResult) *measurement { return x.rollP5 }))
		rr = ratio(p5, swarmUpd)
		fmt.Fprintf(&w, "  %-60s %7.2fs  %5.2f s/replica  ratio to swarm %.2f (target <= %.2f) %s   failed requests %d/%d\n",
			s.label+"  update.parallel 5", p5.Seconds(), perRep(p5), rr, rollP5Target, mark(rr, rollP5Target), f, t)
	}
	fmt.Fprintf(&w, "rollback %d, berth rollback to the revision just replaced (demo:2 -> demo:1)\n", n)
	for i, s := range b.sides {
		roll := median(rs, side(i, func(x *berthResult) *measurement { return x.roll }))
		rb := median(rs, side(i, func(x *berthResult) *measurement { return x.rollback }))
		f, t := failedTotal(rs, side(i, func(x *berthResult) *measurement { return x.rollback }))
		rr := ratio(rb, roll)
		fmt.Fprintf(&w, "  %-60s %7.2fs  %5.2f s/replica  ratio to its rolling update %.2f (target <= %.2f) %s   failed requests %d/%d\n",
			s.label+"  berth rollback", rb.Seconds(), perRep(rb), rr, rollbackTarget, mark(rr, rollbackTarget), f, t)
	}

	floor := median(rs, func(r *roundResult) *measurement { return r.floor })
	floorBare := median(rs, func(r *roundResult) *measurement { return r.floorBare })
	swarmCreate := median(rs, func(r *roundResult) *measurement { return r.swarmCreate })
	fmt.Fprintf(&w, "deploy from nothing %d, until all answer\n", n)
	fmt.Fprintf(&w, "  %-60s %7.2fs\n", fmt.Sprintf("floor    docker run -d, %d at a time, same limits and init", floorParallel), floor.Seconds())
	fmt.Fprintf(&w, "  %-60s %7.2fs\n", fmt.Sprintf("floor    docker run -d, %d at a time, bare (no limits, no init)", floorParallel), floorBare.Seconds())
	fmt.Fprintf(&w, "  %-60s %7.2fs\n", "swarm    docker service create", swarmCreate.Seconds())
	for i, s := range b.sides {
		deploy := median(rs, side(i, func(x *berthResult) *measurement { return x.deploy }))
		dr := ratio(deploy, swarmCreate)
		fmt.Fprintf(&w, "  %-60s %7.2fs  ratio to swarm %.2f (target <= %.2f) %s   ratio to the floor %.2f\n",
			s.label+"  berth deploy", deploy.Seconds(), dr, deployTarget, mark(dr, deployTarget), ratio(deploy, floor))
	}
	if len(b.sides) > 1 {
		fmt.Fprintf(&w, "%s against %s (time ratio, medians):", b.sides[0].label, b.sides[1].label)
		for _, x := range []struct {
			name string
			f    func(*berthResult) *measurement
		}{
			{"rolling update", func(x *berthResult) *measurement { return x.roll }},
			{"parallel 5", func(x *berthResult) *measurement { return x.rollP5 }},
			{"rollback", func(x *berthResult) *measurement { return x.rollback }},
			{"deploy", func(x *berthResult) *measurement { return x.deploy }},
		} {
			fmt.Fprintf(&w, "  %s %.2f", x.name, ratio(median(rs, side(0, x.f)), median(rs, side(1, x.f))))
		}
		fmt.Fprintf(&w, "\n")
	}

	fmt.Fprintf(&w, "\nper round (seconds):\n")
	type row struct {
		name string
		pick pick
	}
	rows := []row{{"swarm update", func(r *roundResult) *measurement { return r.swarmUpdate }}}
	for i, s := range b.sides {
		rows = append(rows,
			row{s.label + " rolling update", side(i, func(x *berthResult) *measurement { return x.roll })},
			row{s.label + " rolling update p5", side(i, func(x *berthResult) *measurement { return x.rollP5 })},
			row{s.label + " rollback", side(i, func(x *berthResult) *measurement { return x.rollback })})
	}
	rows = append(rows,
		row{"floor", func(r *roundResult) *measurement { return r.floor }},
		row{"floor bare", func(r *roundResult) *measurement { return r.floorBare }},
		row{"swarm create", func(r *roundResult) *measurement { return r.swarmCreate }})
	for i, s := range b.sides {
		rows = append(rows, row{s.label + " deploy", side(i, func(x *berthResult) *measurement { return x.deploy })})
	}
	for _, x := range rows {
		fmt.Fprintf(&w, "  %-28s %s\n", x.name, perRound(rs, x.pick))
	}

	b.renderBreakdown(&w, rs)

	fmt.Fprintf(&w, "\ndetails:\n")
	for i, r := range rs {
		var ms []*measurement
		for _, x := range r.berth {
			ms = append(ms, x.deploy, x.roll, x.rollback, x.rollP5)
		}
		ms = append(ms, r.swarmCreate, r.swarmUpdate, r.floor, r.floorBare)
		for _, m := range ms {
			if m == nil {
				continue
			}
			fmt.Fprintf(&w, "- round %d, %s: all answered %.2fs; the command returned after %.2fs", i+1, m.name, m.took.Seconds(), m.cli.Seconds())
			if m.settled > 0 {
				fmt.Fprintf(&w, "; only new containers running after %.2fs", m.settled.Seconds())
			}
			if m.rolledOut > 0 {
				fmt.Fprintf(&w, "; berth's history said rolled out after %.2fs", m.rolledOut.Seconds())
			}
			fmt.Fprintf(&w, "; answered %s; load %s -> %s; CPU until all answered: %s%s\n", spread(m.answers.sorted(), m.t0), m.load0, m.load1, m.cpu, m.loadText())
		}
	}
	for _, s := range b.sides {
		b.logProblems(s)
	}
	for _, note := range b.notes {
		fmt.Fprintf(&w, "- %s\n", note)
	}
	if b.verbose {
		for i, r := range rs {
			for _, x := range r.berth {
				for _, m := range []*measurement{x.deploy, x.roll, x.rollback, x.rollP5} {
					if m != nil {
						fmt.Fprintf(&w, "\nround %d, %s, berth's events:\n%s", i+1, m.name, berthEventsText(m.berthEvents, m.t0))
					}
				}
			}
		}
	}
	return w.String()
}

func roundOrders(rs []*roundResult) string {
	var parts []string
	for i, r := range rs {
		parts = append(parts, fmt.Sprintf("%d: %s", i+1, r.order))
	}
	return strings.Join(parts, "; ")
}

func spread(ts []time.Time, t0 time.Time) string {
	if len(ts) == 0 {
		return "(none)"
	}
	return fmt.Sprintf("first +%.2fs, median +%.2fs, last +%.2fs", ts[0].Sub(t0).Seconds(), ts[len(ts)/2].Sub(t0).Seconds(), ts[len(ts)-1].Sub(t0).Seconds())
}

// renderBreakdown: where the time goes, pooled over the rounds.
func (b *bench) renderBreakdown(w *strings.Builder, rs []*roundResult) {
	fmt.Fprintf(w, "\nwhere the time goes (every replica of every round; berth's events, the engine's container events, the probe):\n")
	var secs []section
	for i, s := range b.sides {
		secs = append(secs,
			section{s.label + " rolling update, update defaults", func(st *steps, r *roundResult) { b.addBerthUpdate(st, r.berth[i].roll, "2") }},
			section{s.label + " rolling update, parallel 5", func(st *steps, r *roundResult) { b.addBerthUpdate(st, r.berth[i].rollP5, "2") }},
			section{s.label + " rollback", func(st *steps, r *roundResult) { b.addBerthUpdate(st, r.berth[i].rollback, "1") }})
	}
	if !b.onlyBerth {
		secs = append(secs, section{"swarm update", func(st *steps, r *roundResult) { b.addSwarmUpdate(st, r.swarmUpdate) }})
	}
	for i, s := range b.sides {
		secs = append(secs, section{s.label + " deploy from nothing", func(st *steps, r *roundResult) {
			b.addDeploy(st, b.berthLives(r.berth[i].deploy), r.berth[i].deploy.t0)
		}})
	}
	if !b.onlyBerth {
		secs = append(secs, b.dockerSections()...)
	}
	for _, sec := range secs {
		st := newSteps()
		for _, r := range rs {
			sec.add(st, r)
		}
		if len(st.order) == 0 {
			continue
		}
		fmt.Fprintf(w, "  %s:\n", sec.title)
		st.render(w, "    ")
	}
}

type section struct {
	title string
	add   func(*steps, *roundResult)
}

func (b *bench) dockerSections() []section {
	return []section{
		{"swarm create", func(st *steps, r *roundResult) {
			b.addDeploy(st, b.sideLives(r.swarmCreate, func(ev dockerEvent) bool { return ev.Attrs["com.docker.swarm.service.name"] == b.service }, containerKey), r.swarmCreate.t0)
		}},
		{"floor, same limits", func(st *steps, r *roundResult) {
			b.addDeploy(st, b.sideLives(r.floor, func(ev dockerEvent) bool { return ev.Attrs["berth-bench.floor"] == b.runID }, containerKey), r.floor.t0)
		}},
		{"floor, bare", func(st *steps, r *roundResult) {
			b.addDeploy(st, b.sideLives(r.floorBare, func(ev dockerEvent) bool { return ev.Attrs["berth-bench.floor-bare"] == b.runID }, containerKey), r.floorBare.t0)
		}},
	}
}

// logProblems notes berth's warnings and errors, counted by message.
func (b *bench) logProblems(s *berthSide) {
	if s.up == nil {
		return
	}
	f, err := os.Open(s.up.LogPath)
	if err != nil {
		return
	}
	defer f.Close()
	count := map[string]int{}
	var order []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, "level=WARN") && !strings.Contains(l, "level=ERROR") {
			continue
		}
		key := measure.LogKey(l)
		if c := strings.Index(l, "component="); c >= 0 {
			comp, _, _ := strings.Cut(l[c:], " ")
			key += " " + comp
		}
		if count[key] == 0 {
			order = append(order, key)
		}
		count[key]++
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%dx %s", count[k], k))
	}
	if len(parts) > 0 {
		b.note("%s log warnings/errors: %s", s.label, strings.Join(parts, "; "))
	}
}
