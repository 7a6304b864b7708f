package main

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

type report struct {
	assetMiB, freshMiB int
	spec               appSpec
	build              buildResult
	serve              serveResult
	serveErr           error // the commit-to-serving comparison failed
	wall               time.Duration
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

// median of durations (the mean of the middle two of an even count).
func median(xs []time.Duration) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianOf[T any](rs []T, f func(T) time.Duration) time.Duration {
	var xs []time.Duration
	for _, r := range rs {
		xs = append(xs, f(r))
	}
	return median(xs)
}

func each[T any](rs []T, f func(T) string) string {
	var parts []string
	for _, r := range rs {
		parts = append(parts, f(r))
	}
	return strings.Join(parts, " ")
}

func order(berthFirst bool) string {
	if berthFirst {
		return "berth first"
	}
	return "floor first"
}

func (r *report) render() string {
	var s strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rev, _ := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output()
	dv, _ := dockerCLI(ctx, "version", "--format", "{{.Server.Version}}")
	fmt.Fprintf(&s, "berth builds bench  %s  docker %s  nproc %d  berth %s  (one run; wall time %.0fs)\n\n",
		time.Now().UTC().Format(time.RFC3339), dv, runtime.NumCPU(), strings.TrimSpace(string(rev)), r.wall.Seconds())
	r.renderBuild(&s)
	r.renderServe(&s)
	r.renderDetails(&s)
	return s.String()
}

func (r *report) renderBuild(s *strings.Builder) {
	b := r.build
	berth := medianOf(b.rounds, func(x buildRound) time.Duration { return x.berth })
	floor := medianOf(b.rounds, buildRound.floor)
	fmt.Fprintf(s, "build: berth build of a git work tree (%s: the demo binary, a %d MiB asset, a %d MiB fresh file; FROM scratch, a COPY each) into berth's registry, "+
		"against docker build + docker push of it into the same registry; before each build %d MiB of new random bytes are committed in fresh.bin "+
		"(a layer rebuilt and uploaded on each side); the median of %d rounds, the sides alternating\n",
		mib(b.contextBytes), r.assetMiB, r.freshMiB, r.freshMiB, len(b.rounds))
	fmt.Fprintf(s, "  berth build APP DIR                 %7s\n", secs(berth))
	fmt.Fprintf(s, "  floor: docker build + docker push   %7s   (build %s, push %s)\n", secs(floor),
		secs(medianOf(b.rounds, func(x buildRound) time.Duration { return x.floorBuild })),
		secs(medianOf(b.rounds, func(x buildRound) time.Duration { return x.floorPush })))
	verdict := "met"
	if ratio(berth, floor) > 1.15 {
		verdict = "missed"
	}
	fmt.Fprintf(s, "  ratio berth/floor (time)            %7.2f   (rounds: %s; target <= 1.15: %s)\n\n", ratio(berth, floor),
		each(b.rounds, func(x buildRound) string { return fmt.Sprintf("%.2f", ratio(x.berth, x.floor())) }), verdict)
}

func (r *report) renderServe(s *strings.Builder) {
	v := r.serve
	sp := r.spec
	fmt.Fprintf(s, "commit to serving: app %s of %s (%d replicas, route %s, health %s every %s), deployed first with %s; each round commits %d MiB of new random bytes "+
		"and times git push berth main until the %d instances of the new commit answer through the gateway, against docker build + docker run of the same work tree "+
		"until GET /healthz answers (one container, no registry); the median of %d rounds, the sides alternating\n",
		sp.Name, sp.path, sp.Replicas, sp.Routes[0], sp.Health.HTTP, sp.Health.Interval, baseImage, r.freshMiB, sp.Replicas, *rounds)
	if r.serveErr != nil {
		msg, _, _ := strings.Cut(r.serveErr.Error(), "\n")
		fmt.Fprintf(s, "  FAILED: %s\n  (no figures: the bench's stderr has the push's last lines)\n\n", msg)
		return
	}
	berth := medianOf(v.rounds, serveRound.berth)
	floor := medianOf(v.rounds, serveRound.floor)
	fmt.Fprintf(s, "  git push berth main -> serving      %7s   (the phases' medians:)\n", secs(berth))
	for i, p := range servePhases {
		d := medianOf(v.rounds, func(x serveRound) time.Duration { return x.phase(i) })
		what := p.what
		if d < 0 {
			what += " (negative: the gateway served them all before the push's last line came)"
		}
		fmt.Fprintf(s, "    %-8s %7s   %s\n", p.name, secs(d), what)
	}
	fmt.Fprintf(s, "  floor: docker build + docker run    %7s   (build %s, docker run -d %s, until /healthz answers %s)\n", secs(floor),
		secs(medianOf(v.rounds, func(x serveRound) time.Duration { return x.floorBuild })),
		secs(medianOf(v.rounds, func(x serveRound) time.Duration { return x.floorRun })),
		secs(medianOf(v.rounds, func(x serveRound) time.Duration { return x.floorAnswer })))
	fmt.Fprintf(s, "  ratio berth/floor (time)            %7.2f   (rounds: %s)\n", ratio(berth, floor),
		each(v.rounds, func(x serveRound) string { return fmt.Sprintf("%.2f", ratio(x.berth(), x.floor())) }))
	fmt.Fprintf(s, "  (above 1, as expected: berth builds, pushes into its registry, has the engine pull, and replaces the %d instances one at a time, each new one "+
		"waiting for its health check before the next; the floor starts one container of the image it just built)\n\n", sp.Replicas)
}

func (r *report) renderDetails(s *strings.Builder) {
	b, v := r.build, r.serve
	s.WriteString("details:\n")
	fmt.Fprintf(s, "- build rounds [berth build | docker build + docker push]: %s\n", each(b.rounds, func(x buildRound) string {
		return fmt.Sprintf("[%s | %s + %s, %s]", secs(x.berth), secs(x.floorBuild), secs(x.floorPush), order(x.berthFirst))
	}))
	var marks []string
	for _, m := range berthBuildMarks {
		marks = append(marks, fmt.Sprintf("%s %s", m.name, secs(medianOf(b.rounds, func(x buildRound) time.Duration { return x.mark(m.name) }))))
	}
	fmt.Fprintf(s, "- build: berth build's output lines, when they arrived from its start (medians): %s; the build log reaches the CLI in the pieces "+
		"the agent uploads every second, so building/pushing are late by up to a second\n", strings.Join(marks, ", "))
	fmt.Fprintf(s, "- build: the server's record of each build (medians, from berth build's start): created %s (the context read from the clean work tree, sent and stored), "+
		"started on the node %s, ended %s (built, the revision added, saved, uploaded, in the registry); berth build exited at %s\n",
		secs(medianOf(b.rounds, func(x buildRound) time.Duration { return x.rec.created })),
		secs(medianOf(b.rounds, func(x buildRound) time.Duration { return x.rec.started })),
		secs(medianOf(b.rounds, func(x buildRound) time.Duration { return x.rec.ended })),
		secs(medianOf(b.rounds, func(x buildRound) time.Duration { return x.berth })))
	fmt.Fprintf(s, "- build: what berth did of each build: the context read from the work tree's tracked files (what git archive would write) and sent to the server, the agent fetching it into the engine's build, "+
		"docker save of the image, uploaded to the server, which stored the blobs its registry lacked and added a layer with /app/REVISION and the revision label "+
		"(last round: %s); docker push uploaded the layers the registry lacked, gzipped (last round: %s)\n", b.pushed, b.rounds[len(b.rounds)-1].floorLayer)
	fmt.Fprintf(s, "- build: both sides build on this machine's engine with its classic builder (berth through the Engine API, builder v1; the floor with DOCKER_BUILDKIT=0), "+
		"each new fresh.bin misses its COPY's cache, the demo's and the asset's COPY hit it; warm-up, untimed, before the rounds: berth build %s, docker build + push %s "+
		"(the asset's and the demo's layers into the cache and into the registry on each side)\n", secs(b.warmBerth), secs(b.warmFloor))
	if r.serveErr == nil {
		r.renderServeDetails(s)
	}
	serveLoad := fmt.Sprintf("%s before the serve rounds, %s after", v.loadBefore, v.loadAfter)
	if r.serveErr != nil {
		serveLoad = fmt.Sprintf("%s before the serve rounds", v.loadBefore)
	}
	fmt.Fprintf(s, "- machine: load %s before the build rounds, %s after; %s (this machine's CPUs and Docker engine are shared)\n",
		b.loadBefore, b.loadAfter, serveLoad)
	s.WriteString("- all on loopback: berth up with its default flags (the agent's pull cache on) on free ports, its data and registry in a temporary dir, the machine's one Docker engine for both sides\n")
}

func (r *report) renderServeDetails(s *strings.Builder) {
	v := r.serve
	fmt.Fprintf(s, "- serve rounds [git push to serving (%s) | docker build + run + answer]: %s\n",
		each(servePhases, func(p struct{ name, mark, what string }) string { return p.name }),
		each(v.rounds, func(x serveRound) string {
			var ph []string
			for i := range servePhases {
				ph = append(ph, fmt.Sprintf("%.2f", x.phase(i).Seconds()))
			}
			return fmt.Sprintf("[%s (%s) | %s + %s + %s, %s]", secs(x.berth()), strings.Join(ph, " "), secs(x.floorBuild), secs(x.floorRun), secs(x.floorAnswer), order(x.berthFirst))
		}))
	fmt.Fprintf(s, "- serve: git push exited at %s (median) after its start; its stderr was read as a stream, each line stamped as it arrived: the build's lines come "+
		"in the agent's one-second log pieces, the rollout's events from a watch, the last line when the CLI's follow (every 500ms) sees the rollout done; "+
		"\"serving\" polled GET /v1/instances and GET / through the gateway (Host %s) every 50ms from the \"deployed\" line, and ends when each of the %d new instances has answered: "+
		"negative when the gateway served them all before the push said so\n",
		secs(medianOf(v.rounds, func(x serveRound) time.Duration { return x.exited })), r.spec.Routes[0], r.spec.Replicas)
	fmt.Fprintf(s, "- serve: the server's record of each push's build (medians, from git push's start): created %s, started on the node %s, ended %s (pushed into the registry, the app deployed)\n",
		secs(medianOf(v.rounds, func(x serveRound) time.Duration { return x.rec.created })),
		secs(medianOf(v.rounds, func(x serveRound) time.Duration { return x.rec.started })),
		secs(medianOf(v.rounds, func(x serveRound) time.Duration { return x.rec.ended })))
	fmt.Fprintf(s, "- serve: before the rounds, berth deploy -f %s (%s) answered through the gateway after %s; warm-up, untimed: git push -o deploy=false %s "+
		"(a repository's first push sends all of it, the asset too; a timed one a commit of %d MiB), the floor %s\n",
		r.spec.path, baseImage, secs(v.deploy), secs(v.warmPush), r.freshMiB, secs(v.warmFloor))
}
