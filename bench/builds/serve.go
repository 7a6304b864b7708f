package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"berth/api"
	"berth/internal/client"
)

// The phases of a push, each ending at a mark: the moment the line
// containing it arrived on the push's stderr (served: when the bench saw
// the new revision answer through the gateway from every instance).
var servePhases = []struct{ name, mark, what string }{
	{"receive", "context", `push start -> "remote: context:"`},
	{"build", "pushing", `-> "berth: pushing"`},
	{"push", "deployed", `-> "berth: deployed"`},
	{"pull", "started", `-> the first "started" event of a new instance`},
	{"rollout", "healthy", `-> "healthy at revision"`},
	{"serving", "served", "-> all instances answer through the gateway"},
}

var (
	startedEvent = regexp.MustCompile(`^remote:\s+\+\S+\s+\S+\s+started\s`)
	healthyLine  = regexp.MustCompile(`^remote: \S+: \d+/\d+ healthy at revision \d+`)
)

type serveRound struct {
	berthFirst bool
	sha        string
	marks      map[string]time.Duration // from the push's start
	exited     time.Duration            // git push exited
	out        stamped
	rec        buildRecord // the server's record of the push's build

	floorBuild, floorRun, floorAnswer time.Duration // floor: docker build, docker run -d, until /healthz answers
}

func (r serveRound) berth() time.Duration { return r.marks["served"] }
func (r serveRound) floor() time.Duration { return r.floorBuild + r.floorRun + r.floorAnswer }

// phase is the duration of phase i of the round: from the previous mark
// to its own.
func (r serveRound) phase(i int) time.Duration {
	var from time.Duration
	if i > 0 {
		from = r.marks[servePhases[i-1].mark]
	}
	return r.marks[servePhases[i].mark] - from
}

type serveResult struct {
	deploy                time.Duration // berth deploy -f of berth/demo:1, until it served
	warmPush, warmFloor   time.Duration
	rounds                []serveRound
	loadBefore, loadAfter string
}

// serving deploys the app with berth/demo:1, then in rounds pushes a new
// commit and times it until the new revision serves, against the floor.
func (b *bench) serving(ctx context.Context, spec appSpec) (serveResult, error) {
	var res serveResult
	r, err := b.newRepo(ctx, filepath.Join(b.tmp, "serve"))
	if err != nil {
		return res, err
	}
	path, err := filepath.Abs(spec.path)
	if err != nil {
		return res, err
	}
	t0 := time.Now()
	if _, err := b.berth.CLI(ctx, "deploy", "-f", path); err != nil {
		return res, err
	}
	if _, err := b.waitServing(ctx, spec, baseImage, t0.Add(3*time.Minute)); err != nil {
		return res, fmt.Errorf("the app of %s: %w", spec.path, err)
	}
	res.deploy = time.Since(t0)
	logf("serve: %s deployed (%d replicas of %s, route %s) and answering through the gateway in %s", spec.Name, spec.Replicas, baseImage, spec.Routes[0], secs(res.deploy))
	remote := fmt.Sprintf("http://berth:%s@%s/git/%s.git", b.berth.Token, b.berth.Addr, spec.Name)
	if _, err := r.git(ctx, "remote", "add", "berth", remote); err != nil {
		return res, err
	}
	// Warm-up, untimed: the repository's first push sends all of it (the
	// asset, the demo binary); -o deploy=false builds without deploying.
	warm, _, err := b.push(ctx, r, "-o", "deploy=false")
	if err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	res.warmPush = warm.wall
	if _, err := r.fresh(ctx, "warm-up floor"); err != nil {
		return res, err
	}
	fb, fr, fa, err := b.floorServe(ctx, r, "warm-up")
	if err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	res.warmFloor = fb + fr + fa
	logf("serve warm-up: git push -o deploy=false %s; floor %s", secs(res.warmPush), secs(res.warmFloor))

	res.loadBefore = loadavg()
	for i := range *rounds {
		round := serveRound{berthFirst: i%2 == 0}
		sides := []func() error{
			func() error {
				sha, err := r.fresh(ctx, fmt.Sprintf("round %d berth", i+1))
				if err != nil {
					return err
				}
				round.sha = sha
				return b.pushRound(ctx, r, spec, &round)
			},
			func() error {
				if _, err := r.fresh(ctx, fmt.Sprintf("round %d floor", i+1)); err != nil {
					return err
				}
				var err error
				round.floorBuild, round.floorRun, round.floorAnswer, err = b.floorServe(ctx, r, fmt.Sprint(i+1))
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
		var ph []string
		for j, p := range servePhases {
			ph = append(ph, fmt.Sprintf("%s %s", p.name, secs(round.phase(j))))
		}
		logf("serve round %d: git push to serving %s (%s; push exited at %s); floor %s (build %s, run %s, answer %s); ratio %.2f",
			i+1, secs(round.berth()), strings.Join(ph, ", "), secs(round.exited), secs(round.floor()),
			secs(round.floorBuild), secs(round.floorRun), secs(round.floorAnswer), ratio(round.berth(), round.floor()))
		res.rounds = append(res.rounds, round)
	}
	res.loadAfter = loadavg()
	return res, nil
}

// push runs git push berth main (with opts before the remote), its
// stderr read as a stream; onLine sees each line as it arrives.
func (b *bench) push(ctx context.Context, r *repo, opts ...string) (stamped, time.Time, error) {
	return b.pushWatching(ctx, r, nil, opts...)
}

func (b *bench) pushWatching(ctx context.Context, r *repo, onLine func(stampedLine), opts ...string) (stamped, time.Time, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := &queueWatch{b: b, cancel: cancel}
	go w.run(ctx)
	args := append(append([]string{"-C", r.dir, "push"}, opts...), "berth", "main")
	cmd := commandIn(ctx, "", append(slices.Clone(b.env), "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=/bin/false"), "git", args...)
	out, start, err := runStamped(cmd, func(l stampedLine) {
		w.line(l)
		if onLine != nil {
			onLine(l)
		}
	})
	b.noteBuilt(out)
	if werr := w.err(); werr != nil {
		err = werr
	}
	if err != nil {
		return out, start, fmt.Errorf("git push berth main: %v:\n%s", err, out.tail(20))
	}
	return out, start, nil
}

// pushRound times one push of round.sha until the new revision serves.
func (b *bench) pushRound(ctx context.Context, r *repo, spec appSpec, round *serveRound) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	image := spec.Name + ":" + round.sha
	var once sync.Once
	deployed := make(chan struct{})
	onLine := func(l stampedLine) {
		if strings.Contains(l.text, "berth: deployed ") {
			once.Do(func() { close(deployed) })
		}
	}
	// The watcher starts at the "deployed" line (or when the push ends):
	// the new revision cannot serve before it is deployed.
	type served struct {
		at  time.Time
		err error
	}
	result := make(chan served, 1)
	go func() {
		select {
		case <-deployed:
		case <-ctx.Done():
			result <- served{err: ctx.Err()}
			return
		}
		at, err := b.waitServing(ctx, spec, image, time.Now().Add(4*time.Minute))
		result <- served{at, err}
	}()
	// The push, in the background: once the new revision serves, it has
	// a minute to end (its rollout follow to see the rollout done).
	type pushed struct {
		out   stamped
		start time.Time
		err   error
	}
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	done := make(chan pushed, 1)
	go func() {
		out, start, err := b.pushWatching(pctx, r, onLine)
		done <- pushed{out, start, err}
	}()
	var p pushed
	var s served
	gotServed := false
	var grace <-chan time.Time
wait:
	for {
		select {
		case p = <-done:
			break wait
		case s = <-result:
			gotServed = true
			if s.err == nil {
				grace = time.After(time.Minute)
			}
		case <-grace:
			pcancel()
			p = <-done
			p.err = fmt.Errorf("git push did not end within a minute of the new revision serving through the gateway "+
				"(%s after the push's start; its rollout follow did not see the rollout done), so the bench stopped it: %w",
				secs(s.at.Sub(p.start)), p.err)
			break wait
		}
	}
	once.Do(func() { close(deployed) })
	out, start, err := p.out, p.start, p.err
	round.out, round.exited = out, out.wall
	if err != nil {
		cancel()
		if !gotServed {
			<-result
		}
		return err
	}
	if !gotServed {
		s = <-result
	}
	if s.err != nil {
		return fmt.Errorf("after git push of %s: %w", round.sha[:12], s.err)
	}
	round.marks = map[string]time.Duration{"served": s.at.Sub(start)}
	if round.rec, err = b.buildRecord(ctx, out, start); err != nil {
		return err
	}
	for _, m := range []struct {
		name  string
		match func(string) bool
	}{
		{"context", func(s string) bool { return strings.HasPrefix(s, "remote: context: ") }},
		{"building", func(s string) bool { return strings.HasPrefix(s, "remote: berth: building ") }},
		{"pushing", func(s string) bool { return strings.HasPrefix(s, "remote: berth: pushing ") }},
		{"deployed", func(s string) bool { return strings.HasPrefix(s, "remote: berth: deployed ") }},
		{"started", startedEvent.MatchString},
		{"healthy", healthyLine.MatchString},
	} {
		at, ok := out.firstMatch(m.match)
		if !ok {
			return fmt.Errorf("git push of %s: no %s line in its output:\n%s", round.sha[:12], m.name, out.tail(30))
		}
		round.marks[m.name] = at
	}
	return nil
}

// waitServing waits until the app's instances meant to run are
// spec.Replicas, all of image, running and healthy, and each of them has
// answered GET / through the gateway with the route's Host header; it
// returns the moment it saw the last of them answer.
func (b *bench) waitServing(ctx context.Context, spec appSpec, image string, deadline time.Time) (time.Time, error) {
	cl := b.berth.Client()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	seen := map[string]bool{}
	last := "no answer yet"
	for {
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s did not serve %s through the gateway in time: %s", spec.Name, image, last)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%w (%s)", ctx.Err(), last)
		default:
		}
		names, state, err := newInstances(ctx, cl, spec, image)
		switch {
		case err != nil:
			last = err.Error()
		case len(names) < spec.Replicas:
			last = state
		default:
			last = ""
			for range 4 * spec.Replicas {
				name, err := b.gatewayGet(ctx, hc, spec.Routes[0])
				if err != nil {
					last = err.Error()
					break
				}
				seen[name] = true
				if all(names, seen) {
					return time.Now(), nil
				}
			}
			if last == "" {
				last = fmt.Sprintf("gateway: answers seen from %v, want each of %v", keys(seen), names)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// newInstances are the names of the app's instances meant to run when
// they are all of image and routable; otherwise state says what they are.
func newInstances(ctx context.Context, cl *client.Client, spec appSpec, image string) ([]string, string, error) {
	l, err := cl.ListInstances(ctx, client.InstanceFilter{App: spec.Name})
	if err != nil {
		return nil, "", err
	}
	var names, state []string
	ok := true
	run := 0
	for _, in := range l.Items {
		if in.Desired != api.DesiredRun {
			continue
		}
		run++
		state = append(state, fmt.Sprintf("%s %s %s healthy=%v", in.Name, in.Spec.Image, in.Status.State, in.Status.Healthy))
		if in.Spec.Image != image || !in.Routable() {
			ok = false
			continue
		}
		names = append(names, in.Name)
	}
	if !ok || run != spec.Replicas {
		return nil, fmt.Sprintf("instances: %s", strings.Join(state, "; ")), nil
	}
	return names, "", nil
}

// gatewayGet is GET / through the gateway with host as the Host header;
// it returns the instance that answered ("hello from <instance>.<node>").
func (b *bench) gatewayGet(ctx context.Context, hc *http.Client, host string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+b.berth.GatewayAddr+"/", nil)
	if err != nil {
		return "", err
	}
	req.Host = host
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("gateway: %w", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("gateway: %s: %q", resp.Status, strings.TrimSpace(string(body)))
	}
	f := strings.Fields(string(body))
	if len(f) < 3 || f[0] != "hello" || f[1] != "from" {
		return "", fmt.Errorf("gateway: unexpected answer %q", strings.TrimSpace(string(body)))
	}
	name, _, _ := strings.Cut(f[2], ".")
	return name, nil
}

func all(names []string, seen map[string]bool) bool {
	for _, n := range names {
		if !seen[n] {
			return false
		}
	}
	return true
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// floorServe is the floor of commit to serving: docker build of the work
// tree, docker run -d of it with the port published on loopback, then
// GET /healthz until 200. The container is removed afterwards.
func (b *bench) floorServe(ctx context.Context, r *repo, tag string) (build, run, answer time.Duration, err error) {
	ref := floorRepo + ":" + b.runID + "-" + tag
	t0 := time.Now()
	id, err := dockerCLI(ctx, "build", "-q", "-t", ref, r.dir)
	build = time.Since(t0)
	b.madeImage(lastLine(id), ref)
	if err != nil {
		return build, 0, 0, err
	}
	t0 = time.Now()
	cid, err := dockerCLI(ctx, "run", "-d", "--label", floorLabel+"="+b.runID, "-p", "127.0.0.1::8080", ref)
	if err != nil {
		return build, 0, 0, err
	}
	cid = lastLine(cid)
	defer func() {
		if _, rerr := dockerCLI(context.WithoutCancel(ctx), "rm", "-f", cid); rerr != nil {
			logf("floor: %v", rerr)
		}
	}()
	addr, err := dockerCLI(ctx, "port", cid, "8080/tcp")
	if err != nil {
		return build, 0, 0, err
	}
	run = time.Since(t0)
	addr = strings.Fields(addr)[0]
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	t0 = time.Now()
	for {
		resp, err := hc.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return build, run, time.Since(t0), nil
			}
		}
		if time.Since(t0) > time.Minute {
			return build, run, 0, errors.New("floor: the container's /healthz did not answer 200 within a minute")
		}
		select {
		case <-ctx.Done():
			return build, run, 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
