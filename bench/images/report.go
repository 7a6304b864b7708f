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
	sizeMiB, nEngines int
	imageBytes        int64
	throughput        throughputResult
	herd              herdResult
	wall              time.Duration
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func rate(n int64, d time.Duration) string {
	return fmt.Sprintf("%.0f MiB/s", float64(n)/(1<<20)/d.Seconds())
}

func (r *report) render() string {
	var s strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rev, _ := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output()
	dv, _ := dockerCLI(ctx, "version", "--format", "{{.Server.Version}}")
	fmt.Fprintf(&s, "berth images bench  %s  docker %s  nproc %d  berth %s  (one run; wall time %.0fs)\n\n",
		time.Now().UTC().Format(time.RFC3339), dv, runtime.NumCPU(), strings.TrimSpace(string(rev)), r.wall.Seconds())
	r.renderThroughput(&s)
	r.renderHerd(&s)
	return s.String()
}

func (r *report) renderThroughput(s *strings.Builder) {
	t := r.throughput
	m := t.median()
	size := r.imageBytes
	fmt.Fprintf(s, "registry throughput: an image of %s (%s on %s, %d MiB of it random bytes), from this machine's engine into an empty engine of the bench's own; the median of %d rounds\n",
		mib(size), "one layer", baseImage, r.sizeMiB, len(t.rounds))
	fmt.Fprintf(s, "  berth image push + docker pull   %7s   %9s   (push %s, pull %s)\n", secs(m.berth()), rate(size, m.berth()), secs(m.push), secs(m.pull))
	fmt.Fprintf(s, "  floor: docker save | docker load %7s   %9s\n", secs(m.floor), rate(size, m.floor))
	fmt.Fprintf(s, "  ratio berth/floor (time)         %7.2f   (rounds: %s)\n\n", float64(m.berth())/float64(m.floor),
		roundsText(t.rounds, func(x throughputRound) string { return fmt.Sprintf("%.2f", float64(x.berth())/float64(x.floor)) }))

	h := r.herd
	blobs := h.blobs()
	fmt.Fprintf(s, "the herd: %d engines of the bench's own pull that image (%d blobs: layers and config) at the same moment, from empty\n", r.nEngines, blobs)
	fmt.Fprintf(s, "  %-38s %22s %12s %10s\n", "", "origin blob requests", "origin bytes", "wall")
	for _, c := range h.cases {
		n, bytes := c.originRequests()
		per := 0.0
		if blobs > 0 {
			per = float64(n) / float64(blobs)
		}
		fmt.Fprintf(s, "  %-38s %8d (%.1f per blob) %12s %10s\n", caseTitle(c.name, r.nEngines), n, per, mib(bytes), secs(c.wall))
	}
	s.WriteString("  (expected: 1 per blob when the engines share a cache, as several engines on one host or nearby hosts do; " +
		"one per engine with a cache each, as straight)\n\n")
}

func caseTitle(name string, n int) string {
	switch name {
	case caseShared:
		return fmt.Sprintf("(a) one pull cache shared by the %d", n)
	case casePerNode:
		return "(b) a pull cache per engine"
	}
	return "(c) straight from berth's registry"
}

func (r *report) renderHerd(s *strings.Builder) {
	t, h := r.throughput, r.herd
	s.WriteString("details:\n")
	fmt.Fprintf(s, "- throughput: rounds (save|load, push, pull): %s\n", roundsText(t.rounds, func(x throughputRound) string {
		return fmt.Sprintf("[%s %s %s]", secs(x.floor), secs(x.push), secs(x.pull))
	}))
	fmt.Fprintf(s, "- throughput: docker save of the image to /dev/null alone takes %s (%s): berth image push reads the image that way and streams its layers into the registry as it reads them (none is there yet); "+
		"each round pushes into a repository of its own, so no blob is skipped as already there; the engine is emptied (docker rmi) before each copy\n",
		secs(t.saveOnly), rate(r.imageBytes, t.saveOnly))
	s.WriteString("- throughput: layers go up uncompressed (docker save's tars as they are): with gzip (fastest level) push then pull of this image was slower here (2.1s against 1.9s, internal/imagecopy)\n")
	fmt.Fprintf(s, "- herd: the image was pushed once (bench/herd:1, %s); every request to berth's registry, the caches' and the engines' own, went through a counting reverse proxy: the figures above are blob GETs and bytes it saw\n", secs(h.push))
	for _, c := range h.cases {
		pulls := slices.Clone(c.pulls)
		slices.Sort(pulls)
		var ps []string
		for _, p := range pulls {
			ps = append(ps, secs(p))
		}
		line := fmt.Sprintf("- herd %s: docker pull per engine %s", c.name, strings.Join(ps, " "))
		if c.caches > 0 {
			line += fmt.Sprintf("; %d cache(s), their own counters: origin blob requests %d, %s, blob requests that started a fetch %d, joined one %d, hits %d, served %s; manifest requests to the origin %d",
				c.caches, c.stats.OriginBlobRequests, mib(c.stats.OriginBlobBytes), c.stats.BlobMisses, c.stats.BlobJoins, c.stats.BlobHits, mib(c.stats.ServedBlobBytes), c.stats.OriginManifestRequests)
		}
		fmt.Fprintf(s, "%s; load at the end %s\n", line, c.loadEnd)
	}
	s.WriteString("- herd: the caches, all on this one machine's disk, write (and fsync) every blob they pass on, which straight pulls do not: with a cache per engine that is 4 copies of the image written here at once\n")
	fmt.Fprintf(s, "- machine: load %s before the throughput rounds, %s after; %s before the herd (this machine's CPUs and Docker engine are shared)\n", t.loadBefore, t.loadAfter, h.loadBefore)
	s.WriteString("- all on loopback: berth up (its agent's pull cache off), the caches in the bench's process (internal/pullcache), the engines with their own socket, data root and bridge\n")
}
