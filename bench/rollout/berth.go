package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"berth/api"
	"berth/bench/internal/berthup"
	"berth/internal/client"
)

const (
	berthApp   = "rollout"
	berthHost  = "rollout.bench.test"
	loadEvery  = 10 * time.Millisecond // per load client
	loadConns  = 2                     // load clients through the gateway
	phaseLimit = 5 * time.Minute
)

// spec is the app berth deploys: the demo image with berth's HTTP health
// check (defaults but the path), the resources given to Swarm and the
// floor too, a route for the gateway load, and the update policy.
func (b *bench) writeSpec(image string, parallel int) (string, error) {
	update := ""
	if parallel > 1 {
		update = fmt.Sprintf("update: {parallel: %d}\n", parallel)
	}
	spec := fmt.Sprintf(`name: %s
image: %s
port: 8080
replicas: %d
resources: {cpu: %s, memory: %s}
health: {http: /healthz}
routes: [%s]
%s`, berthApp, image, b.replicas, cpuSpec, memSpec, berthHost, update)
	path := filepath.Join(b.tmp, fmt.Sprintf("%s-%s-p%d.yaml", berthApp, strings.NewReplacer("/", "_", ":", "_").Replace(image), parallel))
	return path, os.WriteFile(path, []byte(spec), 0o644)
}

// berthSide is one berth under test: a `berth up` of the bench's own,
// of the binary given with -berth, or of the one given with -compare.
type berthSide struct {
	label, bin, dir string
	up              *berthup.Up
	cluster         string
}

func (s *berthSide) labels(extra ...string) []string {
	return append([]string{"berth.cluster=" + s.cluster, "berth.app=" + berthApp}, extra...)
}

// berthResult is one round of one berth.
type berthResult struct {
	deploy, roll, rollback, rollP5 *measurement
}

// berthCommand runs a berth verb in the background; its error (with its
// output) arrives on the channel, closed after.
func (s *berthSide) command(ctx context.Context, took *time.Duration, args ...string) <-chan error {
	errc := make(chan error, 1)
	t0 := time.Now()
	go func() {
		out, err := s.up.Command(ctx, args...).CombinedOutput()
		*took = time.Since(t0)
		if err != nil {
			errc <- fmt.Errorf("berth %s: %v: %s", strings.Join(args, " "), err, lastLines(out, 8))
		}
		close(errc)
	}()
	return errc
}

func lastLines(out []byte, n int) string {
	lines := strings.Split(string(bytes.TrimSpace(out)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// berthRound is one round of berth's side: deploy from nothing, a rolling
// update with the defaults under load through the gateway, the rollback
// of it, a rolling update with parallel 5, then berth rm.
func (b *bench) berthRound(ctx context.Context, round int, s *berthSide, r *berthResult) error {
	v1, err := b.writeSpec("berth/demo:1", 1)
	if err != nil {
		return err
	}
	v2, err := b.writeSpec("berth/demo:2", 1)
	if err != nil {
		return err
	}
	v2p5, err := b.writeSpec("berth/demo:2", 5)
	if err != nil {
		return err
	}

	// Deploy from nothing.
	logf("round %d: %s: berth deploy --detach of %d replicas (demo:1)", round, s.label, b.replicas)
	m, err := b.berthPhase(ctx, s, "deploy", nil, "version=1", "deploy", "--detach", "-f", v1)
	if err != nil {
		return err
	}
	r.deploy = m
	if err := b.berthSettle(ctx, s, "1"); err != nil {
		return err
	}

	load := &gatewayLoad{addr: s.up.GatewayAddr, host: berthHost}
	lctx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() { load.run(lctx); close(loadDone) }()
	defer func() { stopLoad(); <-loadDone }()
	if err := sleep(ctx, time.Second); err != nil { // traffic before, as a baseline
		return err
	}

	// Rolling update, the defaults (parallel 1, max_unavailable 0).
	logf("round %d: %s: berth deploy -f (demo:2, update defaults) under load through the gateway", round, s.label)
	if r.roll, err = b.berthPhase(ctx, s, "rolling update", load, "version=2", "deploy", "--detach", "-f", v2); err != nil {
		return err
	}
	if err := b.berthSettle(ctx, s, "2"); err != nil {
		return err
	}

	// Rollback to the revision just replaced.
	logf("round %d: %s: berth rollback %s (to demo:1)", round, s.label, berthApp)
	if r.rollback, err = b.berthPhase(ctx, s, "rollback", load, "version=1", "rollback", "--detach", berthApp); err != nil {
		return err
	}
	if err := b.berthSettle(ctx, s, "1"); err != nil {
		return err
	}

	// Rolling update with parallel 5.
	logf("round %d: %s: berth deploy -f (demo:2, update.parallel 5)", round, s.label)
	if r.rollP5, err = b.berthPhase(ctx, s, "rolling update p5", load, "version=2", "deploy", "--detach", "-f", v2p5); err != nil {
		return err
	}
	if err := b.berthSettle(ctx, s, "2"); err != nil {
		return err
	}
	stopLoad()
	<-loadDone

	logf("round %d: %s: berth rm %s", round, s.label, berthApp)
	if _, err := s.up.CLI(ctx, "rm", berthApp); err != nil {
		return err
	}
	return waitGone(ctx, b.eng, 90*time.Second, s.labels()...)
}

// berthPhase runs one berth verb and measures it from outside: from just
// before the command until the n-th container of the app with the image
// label version answers. The load's counts are taken for the phase (from
// its start until the old containers are gone).
func (b *bench) berthPhase(ctx context.Context, s *berthSide, name string, load *gatewayLoad, version string, args ...string) (*measurement, error) {
	name = s.label + " " + name
	m := &measurement{name: name, side: s, load0: loadavg()}
	if load != nil {
		load.reset()
	}
	cs := b.cpuSet(s)
	c0 := cs.read()
	m.t0 = time.Now()
	errc := s.command(ctx, &m.cli, args...)
	ans, err := waitAnswering(ctx, b.eng, b.replicas, phaseLimit, errc, s.labels("berth.demo."+version)...)
	if err != nil {
		s.dumpEvents(ctx, m.t0)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	m.answers, m.took = ans, ans.last().Sub(m.t0)
	m.cpu = cs.since(c0)
	for err := range errc {
		return nil, err
	}
	// The old ones gone: only the wanted version runs.
	if err := waitSettled(ctx, b.eng, b.replicas, phaseLimit, "berth.demo."+version, s.labels()...); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	m.settled = time.Since(m.t0)
	m.rolledOut = s.waitRolledOut(ctx, m.t0)
	m.load1 = loadavg()
	if load != nil {
		sleep(ctx, 500*time.Millisecond) // traffic after
		m.load = load.snapshot()
	}
	m.t1 = time.Now()
	if m.berthEvents, err = s.events(ctx, m.t0, m.t1); err != nil {
		b.note("%s: events: %v", name, err)
	}
	logf("%s: all %d answered after %.2fs (berth %s --detach returned after %.2fs, old ones stopped after %.2fs, berth said rolled out after %.2fs)%s",
		name, b.replicas, m.took.Seconds(), args[0], m.cli.Seconds(), m.settled.Seconds(), m.rolledOut.Seconds(), m.loadText())
	return m, nil
}

// waitRolledOut waits (up to a minute) until the app's current revision
// is "rolled out" in berth's history, and returns when that was seen,
// from t0 (0: not seen).
func (s *berthSide) waitRolledOut(ctx context.Context, t0 time.Time) time.Duration {
	cl := s.up.Client()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if app, err := cl.GetApp(ctx, berthApp); err == nil {
			if rev, err := cl.GetRevision(ctx, berthApp, app.Revision); err == nil && rev.Outcome == api.OutcomeRolledOut {
				return time.Since(t0)
			}
		}
		if sleep(ctx, listEvery) != nil {
			break
		}
	}
	return 0
}

// berthSettle waits until the API shows every replica routable, and the
// gateway answers for the app.
func (b *bench) berthSettle(ctx context.Context, s *berthSide, version string) error {
	cl := s.up.Client()
	deadline := time.Now().Add(60 * time.Second)
	for {
		l, err := cl.ListInstances(ctx, client.InstanceFilter{App: berthApp})
		if err == nil {
			n, wanted := 0, 0 // instances kept stopped for a fast rollback are neither
			for i := range l.Items {
				if l.Items[i].Desired == api.DesiredRun {
					wanted++
				}
				if l.Items[i].Routable() {
					n++
				}
			}
			if n == b.replicas && wanted == b.replicas && gatewayAnswers(ctx, s.up.GatewayAddr, berthHost) {
				return sleep(ctx, settle)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("berth: %d routable instances of %s (version %s) not reached within 60s", b.replicas, berthApp, version)
		}
		if err := sleep(ctx, listEvery); err != nil {
			return err
		}
	}
}

func (s *berthSide) events(ctx context.Context, t0, t1 time.Time) ([]api.Event, error) {
	l, err := s.up.Client().ListEvents(ctx, berthApp, 10000)
	if err != nil {
		return nil, err
	}
	var out []api.Event
	for _, e := range l.Items {
		if !e.Time.Before(t0) && !e.Time.After(t1) {
			out = append(out, e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

func (s *berthSide) dumpEvents(ctx context.Context, t0 time.Time) {
	evs, err := s.events(context.WithoutCancel(ctx), t0, time.Now())
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench rollout: events:", err)
		return
	}
	fmt.Fprintf(os.Stderr, "bench rollout: berth events of %s since the phase began:\n", berthApp)
	for _, e := range evs {
		fmt.Fprintf(os.Stderr, "    %+7.2fs  %-12s %-10s %s\n", e.Time.Sub(t0).Seconds(), e.Instance, e.Kind, e.Message)
	}
}

// ---- load through the gateway ----

var gatewayClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: loadConns}}

func gatewayAnswers(ctx context.Context, addr, host string) bool {
	code, _, err := gatewayGet(ctx, addr, host)
	return err == nil && code == 200
}

func gatewayGet(ctx context.Context, addr, host string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
	if err != nil {
		return 0, nil, err
	}
	req.Host = host
	resp, err := gatewayClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, body, err
}

// gatewayLoad sends GET / through berth's gateway from loadConns clients
// (keep-alive), each every loadEvery, and counts what failed.
type gatewayLoad struct {
	addr, host string

	mu sync.Mutex
	c  loadCounts
}

type loadCounts struct {
	total, errs, non200, v1, v2 int
	first                       []string // the first few failures
}

func (c loadCounts) failed() int { return c.errs + c.non200 }

func (l *gatewayLoad) reset() {
	l.mu.Lock()
	l.c = loadCounts{}
	l.mu.Unlock()
}

func (l *gatewayLoad) snapshot() loadCounts {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.c
	c.first = append([]string(nil), c.first...)
	return c
}

func (l *gatewayLoad) run(ctx context.Context) {
	var wg sync.WaitGroup
	for range loadConns {
		wg.Go(func() {
			for ctx.Err() == nil {
				code, body, err := gatewayGet(ctx, l.addr, l.host)
				if ctx.Err() != nil {
					return
				}
				l.mu.Lock()
				l.c.total++
				switch {
				case err != nil:
					l.c.errs++
					if len(l.c.first) < 5 {
						l.c.first = append(l.c.first, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
					}
				case code != 200:
					l.c.non200++
					if len(l.c.first) < 5 {
						l.c.first = append(l.c.first, fmt.Sprintf("%s: HTTP %d %s", time.Now().Format("15:04:05.000"), code, bytes.TrimSpace(body)))
					}
				case bytes.Contains(body, []byte("version=2")):
					l.c.v2++
				default:
					l.c.v1++
				}
				l.mu.Unlock()
				sleep(ctx, loadEvery)
			}
		})
	}
	wg.Wait()
}
