package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Deploys that tell the truth (issue 17): what a deploy does to the
// replicas, how it ends when the new revision never gets healthy, and
// what counts as healthy without a health check.

// A spec that names replicas sets them, and the deploy says so; the
// instances it removes for that are scaled down, not replaced. A spec
// that omits replicas keeps the current number.
func TestDeployReplicasFromTheSpec(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	b.deployHealthy(t, "rep", 3)
	if r := b.cli(t, "scale", "rep", "5"); r.code != 0 {
		t.Fatalf("berth scale rep 5:\n%s", r)
	}

	// A template change that names replicas: 3.
	spec := strings.Replace(demoSpec("rep", imageDemo1, 3), "hi from e2e", "hello from e2e", 1)
	r := b.mustDeploy(t, spec)
	if !strings.Contains(r.stdout, "replicas 5 -> 3, from the spec") || !strings.Contains(r.stdout, "3/3 healthy") {
		t.Errorf("deploy: want it to say replicas 5 -> 3, from the spec, and end 3/3 healthy:\n%s", r)
	}
	insts := b.instances(t, "rep")
	if len(insts) != 3 || countRoutable(insts) != 3 {
		t.Errorf("after the deploy: %s, want 3 routable", describe(insts))
	}
	reasons := map[string]string{}
	for _, e := range b.events(t, "rep") {
		if e.Kind == "retired" || e.Kind == "kept" { // kept: stopped for a fast rollback
			reasons[e.Instance] = e.Message
		}
	}
	for _, name := range []string{"rep-4", "rep-5"} {
		if reasons[name] != "scaled down" {
			t.Errorf("%s retired with %q, want \"scaled down\"", name, reasons[name])
		}
	}
	for _, name := range []string{"rep-1", "rep-2", "rep-3"} {
		if !strings.HasPrefix(reasons[name], "replaced by revision ") {
			t.Errorf("%s retired with %q, want replaced by the new revision", name, reasons[name])
		}
	}

	// A spec without replicas keeps what `berth scale` set.
	if r := b.cli(t, "scale", "rep", "4"); r.code != 0 {
		t.Fatalf("berth scale rep 4:\n%s", r)
	}
	spec = strings.Replace(strings.Replace(spec, "replicas: 3\n", "", 1), "hello from e2e", "hey from e2e", 1)
	r = b.mustDeploy(t, spec)
	if !strings.Contains(r.stdout, "4 replicas, kept: the spec names none") || !strings.Contains(r.stdout, "4/4 healthy") {
		t.Errorf("deploy without replicas: want it to keep 4 and say so:\n%s", r)
	}
	if insts := b.instances(t, "rep"); len(insts) != 4 || countRoutable(insts) != 4 {
		t.Errorf("after a deploy without replicas: %s, want 4 routable", describe(insts))
	}
}

// An app whose health check always fails: each replacement waits longer
// than the last, and the deploy ends with an error that names the
// instance and its health check's failure once no progress is made for
// the progress deadline (shortened here with the hidden flag).
func TestDeployNeverHealthyFailsWithinItsDeadline(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	spec := `name: never
image: berth/demo:1
port: 8080
replicas: 1
resources: {cpu: 100m, memory: 32Mi}
health: {http: /nope, interval: 300ms, timeout: 300ms, retries: 2, start_period: 1s}
stop_grace: 1s
`
	const deadline = 20 * time.Second
	start := time.Now()
	r := b.deploy(t, spec, "--progress-deadline", deadline.String())
	took := time.Since(start)
	if r.code == 0 {
		t.Fatalf("the deploy of an app that never gets healthy succeeded:\n%s", r)
	}
	if took < deadline || took > deadline+20*time.Second {
		t.Errorf("the deploy ended after %s, want soon after its progress deadline of %s", took.Round(time.Millisecond), deadline)
	}
	for _, want := range []string{"rollout of never failed: no progress for 20s", "never-", "GET /nope: 404", "berth keeps trying"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the deploy's error does not say %q:\n%s", want, r)
		}
	}

	// The replacements back off: 1s before the second, 2s before the third.
	// (Names come round again: the index of a removed instance is free.)
	evs := b.events(t, "never")
	retiredAt := map[string]time.Time{} // a replacement's name -> when its predecessor was retired
	var backoffs []string
	re := regexp.MustCompile(`^never became healthy: replaced by (never-\d+) in (\d+s) \(attempt (\d+)\)$`)
	for _, e := range evs {
		m := re.FindStringSubmatch(e.Message)
		switch {
		case e.Kind == "retired" && m != nil:
			retiredAt[m[1]] = e.Time
			backoffs = append(backoffs, m[2])
		case e.Kind == "placed" && !retiredAt[e.Instance].IsZero():
			if gap := e.Time.Sub(retiredAt[e.Instance]); gap < 900*time.Millisecond {
				t.Errorf("%s placed %s after its predecessor was retired, want after its backoff", e.Instance, gap)
			}
			delete(retiredAt, e.Instance)
		}
	}
	if len(backoffs) < 2 || backoffs[0] != "1s" || backoffs[1] != "2s" {
		t.Fatalf("retired events: backoffs %v, want 1s, 2s, ...: %+v", backoffs, evs)
	}
	if len(backoffs) > 6 {
		t.Errorf("%d replacements within %s: %v, want them to back off", len(backoffs), took, backoffs)
	}
}

// An app without a health check that is killed for its memory again and
// again is never reported healthy, and its deploy fails; one that stays
// up is healthy after a few seconds. Events come in the order things
// happen and name no address for an app without a port.
func TestNoHealthCheckCrashLoopIsNeverHealthy(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	spec := `name: oom
image: berth/busybox:1
command: [sh, -c, "tail /dev/zero"]
replicas: 1
resources: {cpu: 100m, memory: 16Mi}
stop_grace: 1s
`
	r := b.deploy(t, spec)
	if r.code == 0 || !strings.Contains(r.stderr, "oom-1 keeps exiting") || !strings.Contains(r.stderr, "out of memory") {
		t.Fatalf("deploy of an app killed for its memory again and again: want a failure saying it keeps exiting, out of memory:\n%s", r)
	}
	apps := b.cli(t, "apps")
	if !regexp.MustCompile(`(?m)^oom\s+berth/busybox:1\s+0/1\s`).MatchString(apps.stdout) {
		t.Errorf("berth apps: want oom at 0/1:\n%s", apps.stdout)
	}
	evs := b.events(t, "oom")
	if hasEvent(evs, "oom-1", "healthy") {
		t.Errorf("a crash loop was reported healthy: %+v", evs)
	}
	exited := 0
	for _, e := range evs {
		switch e.Kind {
		case "exited":
			exited++
		case "restarted":
			if exited == 0 {
				t.Errorf("restarted before any exit: %+v", evs)
			}
			exited--
		case "started":
			if strings.Contains(e.Message, " at") {
				t.Errorf("started event of an app without a port names an address: %q", e.Message)
			}
		}
	}

	spec = `name: steady
image: berth/busybox:1
command: [sleep, "3600"]
replicas: 1
resources: {cpu: 100m, memory: 16Mi}
stop_grace: 1s
`
	r = b.mustDeploy(t, spec)
	if !strings.Contains(r.stdout, "1/1 healthy") {
		t.Errorf("deploy of a steady app without a health check:\n%s", r)
	}
	var started, healthy time.Time
	for _, e := range b.events(t, "steady") {
		switch {
		case e.Kind == "started" && started.IsZero():
			started = e.Time
		case e.Kind == "healthy":
			healthy = e.Time
			if strings.Contains(e.Message, " at ") {
				t.Errorf("healthy event of an app without a port names an address: %q", e.Message)
			}
		}
	}
	if started.IsZero() || healthy.IsZero() || healthy.Sub(started) < 4500*time.Millisecond {
		t.Errorf("steady: started %s, healthy %s: want healthy only after about 5s up", started, healthy)
	}
}

// An idled app is marked so in `berth apps`.
func TestAppsMarksIdle(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	spec := demoSpec("nap", imageDemo1, 2) + "routes: [nap.e2e.test]\nidle: {stop_after: 1s}\n"
	b.mustDeploy(t, spec)
	waitFor(t, 30*time.Second, func() (bool, string) {
		r := b.cli(t, "apps")
		return regexp.MustCompile(`(?m)^nap\s+berth/demo:1\s+0/2 idle\s`).MatchString(r.stdout), r.stdout
	})
}

// After a lost node comes back, nothing moves back on its own; the next
// rolling update places every instance again and ends spread evenly.
func TestRollingUpdateSpreadsAfterNodeReturns(t *testing.T) {
	c := startServers(t, 1)
	c.startAgent(t, "a1", "zone=a")
	b1 := c.startAgent(t, "b1", "zone=b")
	api := c.api(t)
	spec := placedSpec("zoned", 4, `{spread: zone}`)
	if r := c.deployCLI(t, spec); r.code != 0 {
		t.Fatalf("deploy failed:\n%s", r)
	}
	// settled waits for 4 routable instances spread as want (the records
	// of instances lost on a stopped node may be left: they are retired).
	settled := func(want map[string]int) {
		t.Helper()
		waitFor(t, 60*time.Second, func() (bool, string) {
			insts := api.instances(t, "zoned")
			got := perNode(insts)
			return countRoutable(insts) == 4 && fmt.Sprint(got) == fmt.Sprint(want), describe(insts)
		})
	}
	settled(map[string]int{"a1": 2, "b1": 2})

	b1.signal(t, syscall.SIGSTOP)
	settled(map[string]int{"a1": 4})
	b1.signal(t, syscall.SIGCONT)
	c.waitNodeReady(t, "b1")
	waitFor(t, 60*time.Second, func() (bool, string) {
		cs := containers(t, c.cluster, "berth.app=zoned", "berth.node=b1")
		return len(cs) == 0, "b1's stale containers: " + describeContainers(cs)
	})
	if got := perNode(api.instances(t, "zoned")); got["b1"] != 0 {
		t.Errorf("instances moved back to b1 on their own: %v", got)
	}

	r := c.deployCLI(t, strings.Replace(spec, "hi from e2e", "hello from e2e", 1))
	if r.code != 0 {
		t.Fatalf("rolling update failed:\n%s", r)
	}
	settled(map[string]int{"a1": 2, "b1": 2})
	waitFor(t, 30*time.Second, func() (bool, string) {
		insts := api.instances(t, "zoned")
		return len(insts) == 4 && fmt.Sprint(perNode(insts)) == "map[a1:2 b1:2]", "want only the 4 new instances, 2 per zone: " + describe(insts)
	})
}
