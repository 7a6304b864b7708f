package main

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// buildRound is one round of the build comparison.
type buildRound struct {
	berthFirst bool
	berth      time.Duration // berth build APP DIR, wall
	berthOut   stamped       // its output, stamped
	rec        buildRecord   // the server's record of the build
	floorBuild time.Duration // docker build
	floorPush  time.Duration // docker push
	floorLayer string        // what docker push said of the layers
}

func (r buildRound) floor() time.Duration { return r.floorBuild + r.floorPush }

// berthPhases are the marks of berth build's output, from its start:
// the context made (its "context:" line), queued, building on the node,
// the Dockerfile built (adding the revision), pushing, built.
var berthBuildMarks = []struct{ name, sub string }{
	{"context", "context: "},
	{"queued", " queued: "},
	{"building", "berth: building "},
	{"pushing", "berth: pushing "},
	{"built", "built " + buildApp + ":"},
}

func (r buildRound) mark(name string) time.Duration {
	for _, m := range berthBuildMarks {
		if m.name == name {
			if name == "built" {
				d, _ := r.berthOut.firstMatch(func(s string) bool { return builtLine.MatchString(s) })
				return d
			}
			d, _ := r.berthOut.first(m.sub)
			return d
		}
	}
	return 0
}

type buildResult struct {
	rounds                []buildRound
	warmBerth, warmFloor  time.Duration
	contextBytes          int64
	pushed                string // berth's "pushed" line of the last round
	loadBefore, loadAfter string
}

var (
	builtLine      = regexp.MustCompile(`^(?:remote: )?built (\S+) digest (sha256:[0-9a-f]{64}) in (\S+)`)
	successfully   = regexp.MustCompile(`Successfully built ([0-9a-f]{12,64})`)
	queuedLine     = regexp.MustCompile(`^(?:remote: )?build (\S+) queued: `)
	pushedLine     = regexp.MustCompile(`berth: pushed \S+, digest \S+ \((.*)\)`)
	floorPushLayer = regexp.MustCompile(`^[0-9a-f]{12}: (Pushed|Layer already exists|Mounted from .*)$`)
)

// builds compares berth build with docker build + docker push, the sides
// alternating, each build of a new fresh.bin.
func (b *bench) builds(ctx context.Context) (buildResult, error) {
	var res buildResult
	r, err := b.newRepo(ctx, filepath.Join(b.tmp, "build"))
	if err != nil {
		return res, err
	}
	res.contextBytes = r.contextBytes()
	logf("build: the sample context is %s (demo binary, %d MiB asset, %d MiB fresh file)", mib(res.contextBytes), *assetMiB, *freshMiB)
	// Warm-up, untimed: the demo and asset layers into the engine's cache
	// and into the registry, on each side.
	if _, err := r.fresh(ctx, "warm-up berth"); err != nil {
		return res, err
	}
	out, _, err := b.berthBuild(ctx, r)
	if err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	res.warmBerth = out.wall
	if _, err := r.fresh(ctx, "warm-up floor"); err != nil {
		return res, err
	}
	fb, fp, _, err := b.floorBuildPush(ctx, r, "floor-warm-up")
	if err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	res.warmFloor = fb + fp
	logf("build warm-up: berth build %s; docker build %s + docker push %s", secs(res.warmBerth), secs(fb), secs(fp))

	res.loadBefore = loadavg()
	for i := range *rounds {
		round := buildRound{berthFirst: i%2 == 0}
		sides := []func() error{
			func() error {
				if _, err := r.fresh(ctx, fmt.Sprintf("round %d berth", i+1)); err != nil {
					return err
				}
				out, start, err := b.berthBuild(ctx, r)
				round.berth, round.berthOut = out.wall, out
				if err == nil {
					round.rec, err = b.buildRecord(ctx, out, start)
				}
				return err
			},
			func() error {
				if _, err := r.fresh(ctx, fmt.Sprintf("round %d floor", i+1)); err != nil {
					return err
				}
				var err error
				round.floorBuild, round.floorPush, round.floorLayer, err = b.floorBuildPush(ctx, r, fmt.Sprintf("floor-%d", i+1))
				return err
			},
		}
		if !round.berthFirst {
			sides[0], sides[1] = sides[1], sides[0]
		}
		for _, side := range sides {
			if err := side(); err != nil {
				return res, fmt.Errorf("round %d: %w", i+1, err)
			}
		}
		for _, l := range round.berthOut.lines {
			if m := pushedLine.FindStringSubmatch(l.text); m != nil {
				res.pushed = m[1]
			}
		}
		logf("build round %d: berth build %s; docker build %s + docker push %s (%s); ratio %.2f", i+1, secs(round.berth),
			secs(round.floorBuild), secs(round.floorPush), round.floorLayer, ratio(round.berth, round.floor()))
		res.rounds = append(res.rounds, round)
	}
	res.loadAfter = loadavg()
	return res, nil
}

// berthBuild runs `berth build APP DIR` of the repository's HEAD.
func (b *bench) berthBuild(ctx context.Context, r *repo) (stamped, time.Time, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := &queueWatch{b: b, cancel: cancel}
	go w.run(ctx)
	cmd := b.berth.Command(ctx, "build", buildApp, r.dir)
	cmd.Env = b.env
	out, start, err := runStamped(cmd, w.line)
	b.noteBuilt(out)
	if werr := w.err(); werr != nil {
		err = werr
	}
	if err != nil {
		return out, start, fmt.Errorf("berth build %s %s: %v:\n%s", buildApp, r.dir, err, out.tail(15))
	}
	if _, ok := out.firstMatch(builtLine.MatchString); !ok {
		return out, start, fmt.Errorf("berth build: no 'built ... digest' line:\n%s", out.tail(15))
	}
	return out, start, nil
}

// buildRecord is what the server's record of a build says of its times,
// from the start of the command that made it.
type buildRecord struct {
	id                      string
	created, started, ended time.Duration
}

// buildRecord reads the record of the build whose "queued" line is in
// out; start is when the command started.
func (b *bench) buildRecord(ctx context.Context, out stamped, start time.Time) (buildRecord, error) {
	var id string
	for _, l := range out.lines {
		if m := queuedLine.FindStringSubmatch(l.text); m != nil {
			id = m[1]
			break
		}
	}
	if id == "" {
		return buildRecord{}, fmt.Errorf("no 'build ID queued' line in the output:\n%s", out.tail(15))
	}
	rec, err := b.berth.Client().GetBuild(ctx, id)
	if err != nil {
		return buildRecord{}, err
	}
	return buildRecord{id: id, created: rec.Created.Sub(start), started: rec.Started.Sub(start), ended: rec.Ended.Sub(start)}, nil
}

// noteBuilt notes the images of a build's log (the engine's "Successfully
// built" ids) for the cleanup.
func (b *bench) noteBuilt(out stamped) {
	for _, l := range out.lines {
		if m := successfully.FindStringSubmatch(l.text); m != nil {
			b.madeImage(m[1])
		}
	}
}

// floorBuildPush is the floor: docker build -t <registry>/APP:tag DIR,
// then docker push of it into berth's registry.
func (b *bench) floorBuildPush(ctx context.Context, r *repo, tag string) (build, push time.Duration, layers string, err error) {
	ref := b.berth.Addr + "/" + buildApp + ":" + tag
	t0 := time.Now()
	id, err := dockerCLI(ctx, "--config", b.config, "build", "-q", "-t", ref, r.dir)
	build = time.Since(t0)
	b.madeImage(lastLine(id), ref)
	if err != nil {
		return build, 0, "", err
	}
	t0 = time.Now()
	out, err := dockerCLI(ctx, "--config", b.config, "push", ref)
	push = time.Since(t0)
	if err != nil {
		return build, push, "", err
	}
	counts := map[string]int{}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if m := floorPushLayer.FindStringSubmatch(strings.TrimSpace(l)); m != nil {
			counts[strings.Fields(m[1])[0]]++
			n++
		}
	}
	return build, push, fmt.Sprintf("%d of %d layers pushed", counts["Pushed"], n), nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}
