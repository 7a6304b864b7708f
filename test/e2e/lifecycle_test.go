package e2e

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestDeployAndInspect deploys 3 replicas and looks at them with every
// read-only verb, and at the instances themselves.
func TestDeployAndInspect(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	r := b.mustDeploy(t, demoSpec("hello", imageDemo1, 3))
	if !strings.Contains(r.stdout, "3/3 healthy") {
		t.Errorf("deploy output does not mention 3/3 healthy:\n%s", r.stdout)
	}

	rows := b.ps(t, "hello")
	if len(rows) != 3 {
		t.Fatalf("berth ps shows %d rows, want 3: %+v", len(rows), rows)
	}
	for _, row := range rows {
		if row.State != "running" || row.Address == "-" || row.Node != b.node {
			t.Errorf("ps row %q: want state running on node %s with an address", row.Line, b.node)
			continue
		}
		code, body, err := curl(row.Address, "/")
		want := fmt.Sprintf("hello from %s.%s (GREETING=hi from e2e)", row.Instance, b.node)
		if err != nil || code != 200 || strings.TrimSpace(body) != want {
			t.Errorf("GET http://%s/ (%s): %d %q %v; want 200 %q", row.Address, row.Instance, code, body, err, want)
		}
	}
	names := map[string]bool{}
	for _, row := range rows {
		names[row.Instance] = true
	}
	for _, want := range []string{"hello-1", "hello-2", "hello-3"} {
		if !names[want] {
			t.Errorf("berth ps has no instance %s: %v", want, names)
		}
	}

	apps := b.cli(t, "apps")
	if apps.code != 0 || !strings.HasPrefix(apps.stdout, "NAME") ||
		!regexp.MustCompile(`(?m)^hello\s+berth/demo:1\s+3/3\s+1\s+8080\s`).MatchString(apps.stdout) {
		t.Errorf("berth apps: want a header and a row 'hello berth/demo:1 3/3 1 8080 ...':\n%s", apps)
	}
	nodes := b.cli(t, "nodes")
	if nodes.code != 0 || !strings.HasPrefix(nodes.stdout, "NAME") ||
		!regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(b.node)+`\s+ready\s+127\.0\.0\.1\s+-\s+\S+/\S+\s+\S+/\S+\s+3\s+0\s`).MatchString(nodes.stdout) {
		t.Errorf("berth nodes: want a header and a row '%s ready 127.0.0.1 - <cpu> <memory> 3 0 ...':\n%s", b.node, nodes)
	}
	status := b.cli(t, "status")
	if status.code != 0 || !regexp.MustCompile(`(?m)^cluster\s+`+b.cluster+`$`).MatchString(status.stdout) ||
		!regexp.MustCompile(`(?m)^store\s+ok `).MatchString(status.stdout) ||
		!regexp.MustCompile(`(?m)^apps\s+1$`).MatchString(status.stdout) ||
		!regexp.MustCompile(`(?m)^instances\s+3$`).MatchString(status.stdout) {
		t.Errorf("berth status: want cluster %s, store ok, apps 1, instances 3:\n%s", b.cluster, status)
	}
	var st struct {
		Store      string `json:"store"`
		StoreRev   int64  `json:"store_revision"`
		StoreBytes int64  `json:"store_bytes"`
	}
	b.getJSON(t, "/v1/status", &st)
	if st.Store != "ok" || st.StoreRev <= 0 || st.StoreBytes <= 0 {
		t.Errorf("GET /v1/status: store %q, revision %d, %d bytes; want ok and a positive revision and size", st.Store, st.StoreRev, st.StoreBytes)
	}

	events := b.cli(t, "events", "hello")
	if events.code != 0 {
		t.Fatalf("berth events failed:\n%s", events)
	}
	for _, inst := range []string{"hello-1", "hello-2", "hello-3"} {
		for _, kind := range []string{"placed", "started", "healthy"} {
			if !regexp.MustCompile(`(?m)\s` + inst + `\s+` + kind + `\s`).MatchString(events.stdout) {
				t.Errorf("berth events hello: no %q event for %s", kind, inst)
			}
		}
	}

	logs := b.cli(t, "logs", "hello")
	if logs.code != 0 {
		t.Fatalf("berth logs failed:\n%s", logs)
	}
	for _, inst := range []string{"hello-1", "hello-2", "hello-3"} {
		if !strings.Contains(logs.stdout, inst+" | listening on :8080") {
			t.Errorf("berth logs hello: no line %q", inst+" | listening on :8080")
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(logs.stdout), "\n") {
		if !regexp.MustCompile(`^hello-\d+ \| `).MatchString(line) {
			t.Errorf("berth logs: line not prefixed by its instance: %q", line)
		}
	}
}

// TestKilledContainerIsRestarted kills a container behind berth's back.
func TestKilledContainerIsRestarted(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	before := byName(b.deployHealthy(t, "kill", 2))
	victim := before["kill-1"]
	if victim.Status.ContainerID == "" {
		t.Fatalf("kill-1 has no container id: %s", victim)
	}
	if out, err := dockerCLI(30*time.Second, "kill", victim.Status.ContainerID); err != nil {
		t.Fatalf("docker kill: %v: %s", err, out)
	}

	var again instance
	waitFor(t, 30*time.Second, func() (bool, string) {
		insts := byName(b.instances(t, "kill"))
		again = insts["kill-1"]
		ok := again.Status.Restarts == 1 && again.Status.ExitCode != nil && *again.Status.ExitCode == 137 && again.routable()
		return ok, "want kill-1 running again after 1 restart with exit code 137: " + again.String()
	})
	insts := b.instances(t, "kill")
	if len(insts) != 2 || insts[0].Name != "kill-1" || insts[1].Name != "kill-2" {
		t.Errorf("instances changed: %s", describe(insts))
	}
	if k2 := byName(insts)["kill-2"]; k2.Status.Restarts != 0 || k2.Status.ContainerID != before["kill-2"].Status.ContainerID {
		t.Errorf("kill-2 was touched: %s", k2)
	}
	if cs := containers(t, b.cluster, "berth.instance=kill-1"); len(cs) != 1 || cs[0].State != "running" {
		t.Errorf("want one running container for kill-1: %s", describeContainers(cs))
	}

	var row psRow
	for _, r := range b.ps(t, "kill") {
		if r.Instance == "kill-1" {
			row = r
		}
	}
	if row.State != "running" || row.Restarts != "1" || row.LastExit != "137" {
		t.Errorf("berth ps: want kill-1 running, RESTARTS 1, LAST EXIT 137: %q", row.Line)
	}
	code, body, err := curl(again.Status.Address, "/")
	if err != nil || code != 200 || !strings.HasPrefix(body, "hello from kill-1.") {
		t.Errorf("kill-1 does not answer again at %s: %d %q %v", again.Status.Address, code, body, err)
	}
	if !hasEvent(b.events(t, "kill"), "kill-1", "restarted") {
		t.Errorf("no restarted event for kill-1")
	}

	// A container removed behind berth's back is made again.
	gone := before["kill-2"].Status.ContainerID
	if out, err := dockerCLI(30*time.Second, "rm", "-f", gone); err != nil {
		t.Fatalf("docker rm -f: %v: %s", err, out)
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		k2 := byName(b.instances(t, "kill"))["kill-2"]
		cs := containers(t, b.cluster, "berth.instance=kill-2")
		ok := k2.routable() && k2.Status.ContainerID != gone && len(cs) == 1 && cs[0].ID == k2.Status.ContainerID && cs[0].State == "running"
		return ok, fmt.Sprintf("want kill-2 running in a new container: %s; %s", k2, describeContainers(cs))
	})
	k2 := byName(b.instances(t, "kill"))["kill-2"]
	if code, body, err := curl(k2.Status.Address, "/"); err != nil || code != 200 || !strings.HasPrefix(body, "hello from kill-2.") {
		t.Errorf("kill-2 does not answer in its new container at %s: %d %q %v", k2.Status.Address, code, body, err)
	}
	if cs := containers(t, b.cluster); len(cs) != 2 {
		t.Errorf("want 2 containers: %s", describeContainers(cs))
	}
}

// TestSickInstanceIsReplaced makes one instance fail its health check.
func TestSickInstanceIsReplaced(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	before := byName(b.deployHealthy(t, "sick", 3))
	victim := before["sick-2"]
	if code, body, err := curl(victim.Status.Address, "/sick"); err != nil || code != 200 {
		t.Fatalf("GET /sick: %d %q %v", code, body, err)
	}

	sawUnhealthy := false
	var newName string
	waitFor(t, 45*time.Second, func() (bool, string) {
		insts := b.instances(t, "sick")
		m := byName(insts)
		if v, ok := m["sick-2"]; ok && (v.Status.State == "unhealthy" || !v.Status.Healthy) {
			sawUnhealthy = true
		}
		cs := containers(t, b.cluster)
		if _, ok := m["sick-2"]; ok {
			return false, "sick-2 still exists: " + describe(insts)
		}
		newName = ""
		for _, i := range insts {
			if _, old := before[i.Name]; !old {
				newName = i.Name
			}
		}
		ok := len(insts) == 3 && countRoutable(insts) == 3 && newName != "" && len(cs) == 3
		return ok, fmt.Sprintf("want 3 routable instances, one of them new, and 3 containers: %s; %s", describe(insts), describeContainers(cs))
	})
	t.Logf("sick-2 replaced by %s (unhealthy state seen while polling: %v)", newName, sawUnhealthy)
	if cs := containers(t, b.cluster, "berth.instance=sick-2"); len(cs) != 0 {
		t.Errorf("the sick instance's container is still there: %s", describeContainers(cs))
	}
	evs := b.events(t, "sick")
	if !hasEvent(evs, "sick-2", "unhealthy") {
		t.Errorf("no unhealthy event for sick-2")
	}
	if !hasEvent(evs, "sick-2", "removed") {
		t.Errorf("no removed event for sick-2")
	}
	for _, i := range b.instances(t, "sick") {
		code, body, err := curl(i.Status.Address, "/")
		if err != nil || code != 200 || !strings.HasPrefix(body, "hello from "+i.Name+".") {
			t.Errorf("%s at %s: %d %q %v", i.Name, i.Status.Address, code, body, err)
		}
		if i.Name == "sick-1" || i.Name == "sick-3" {
			if i.Status.ContainerID != before[i.Name].Status.ContainerID {
				t.Errorf("%s, which was healthy, got a new container", i.Name)
			}
		}
	}
}

// TestScale scales 3 -> 5 -> 0.
func TestScale(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	b.deployHealthy(t, "scale", 3)

	r := b.cli(t, "scale", "scale", "5")
	if r.code != 0 || !strings.Contains(r.stdout, "5/5 healthy") {
		t.Fatalf("berth scale scale 5: want exit 0 and 5/5 healthy:\n%s", r)
	}
	cs := containers(t, b.cluster)
	running := 0
	for _, c := range cs {
		if c.State == "running" {
			running++
		}
	}
	if len(cs) != 5 || running != 5 {
		t.Errorf("after scaling to 5: %s", describeContainers(cs))
	}
	if insts := b.instances(t, "scale"); len(insts) != 5 || countRoutable(insts) != 5 {
		t.Errorf("after scaling to 5: %s", describe(insts))
	}

	r = b.cli(t, "scale", "scale", "0")
	if r.code != 0 {
		t.Fatalf("berth scale scale 0: want exit 0:\n%s", r)
	}
	if cs := containers(t, b.cluster); len(cs) != 0 {
		t.Errorf("after scaling to 0 (once berth scale returned): %s", describeContainers(cs))
	}
	if insts := b.instances(t, "scale"); len(insts) != 0 {
		t.Errorf("after scaling to 0: %s", describe(insts))
	}
	apps := b.cli(t, "apps")
	if !regexp.MustCompile(`(?m)^scale\s+berth/demo:1\s+0/0\s`).MatchString(apps.stdout) {
		t.Errorf("berth apps: want scale at 0/0:\n%s", apps.stdout)
	}
}

// TestRollingUpdateWithoutFailures updates 4 replicas from demo:1 to
// demo:2 while a client keeps sending requests to routable instances.
func TestRollingUpdateWithoutFailures(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	b.deployHealthy(t, "roll", 4)

	type result struct {
		requests int
		failures []string
		versions map[string]int
	}
	stop := make(chan struct{})
	done := make(chan result)
	go func() {
		res := result{versions: map[string]int{}}
		for {
			select {
			case <-stop:
				done <- res
				return
			case <-time.After(20 * time.Millisecond):
			}
			insts, err := b.instancesErr("roll")
			if err != nil {
				res.failures = append(res.failures, "list instances: "+err.Error())
				continue
			}
			var routable []instance
			for _, i := range insts {
				if i.routable() {
					routable = append(routable, i)
				}
			}
			if len(routable) == 0 {
				res.failures = append(res.failures, "no routable instance: "+describe(insts))
				continue
			}
			i := routable[rand.IntN(len(routable))]
			res.requests++
			code, body, err := curl(i.Status.Address, "/")
			switch {
			case err != nil:
				res.failures = append(res.failures, fmt.Sprintf("%s %s at %s: %v", time.Now().Format("15:04:05.000"), i.Name, i.Status.Address, err))
			case code != 200:
				res.failures = append(res.failures, fmt.Sprintf("%s %s at %s: %d %q", time.Now().Format("15:04:05.000"), i.Name, i.Status.Address, code, body))
			case strings.Contains(body, "version=2"):
				res.versions["2"]++
			default:
				res.versions["1"]++
			}
		}
	}()

	r := b.deploy(t, demoSpec("roll", imageDemo2, 4))
	time.Sleep(500 * time.Millisecond) // a few more requests after the rollout
	close(stop)
	res := <-done
	if r.code != 0 || !strings.Contains(r.stdout, "4/4 healthy") {
		t.Errorf("deploy of demo:2: want exit 0 and 4/4 healthy:\n%s", r)
	}
	t.Logf("%d requests during the update, versions answered: %v, %d failures", res.requests, res.versions, len(res.failures))
	if len(res.failures) > 0 {
		t.Errorf("%d of %d requests to routable instances failed during the rolling update; first ones:\n%s",
			len(res.failures), res.requests, strings.Join(res.failures[:min(len(res.failures), 10)], "\n"))
	}
	if res.requests < 50 {
		t.Errorf("only %d requests were sent during the update", res.requests)
	}
	if res.versions["1"] == 0 || res.versions["2"] == 0 {
		t.Errorf("want answers of both versions during the update: %v", res.versions)
	}

	insts := b.instances(t, "roll")
	if len(insts) != 4 || countRoutable(insts) != 4 {
		t.Errorf("after the update: %s", describe(insts))
	}
	for _, i := range insts {
		code, body, err := curl(i.Status.Address, "/")
		if err != nil || code != 200 || !strings.Contains(body, "version=2") {
			t.Errorf("%s at %s does not answer version=2: %d %q %v", i.Name, i.Status.Address, code, body, err)
		}
	}
	// 4 running of demo:2; the 4 replaced stay, stopped (once their stop
	// is done), for a fast rollback.
	waitFor(t, 30*time.Second, func() (bool, string) {
		running, kept := 0, 0
		cs := containers(t, b.cluster)
		for _, c := range cs {
			switch img := dockerInspect(t, c.ID, "{{.Config.Image}}"); {
			case c.State == "running" && img == imageDemo2:
				running++
			case c.State == "exited" && img == imageDemo1:
				kept++
			}
		}
		return running == 4 && kept == 4 && len(cs) == 8, "want 4 running of demo:2 and 4 stopped of demo:1: " + describeContainers(cs)
	})
}

// TestRemoveApp removes an app with berth rm.
func TestRemoveApp(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	b.deployHealthy(t, "gone", 2)
	if cs := containers(t, b.cluster); len(cs) != 2 {
		t.Fatalf("before rm: %s", describeContainers(cs))
	}
	r := b.cli(t, "rm", "gone")
	if r.code != 0 || !strings.Contains(r.stdout, "gone removed") {
		t.Fatalf("berth rm gone: want exit 0 and 'gone removed':\n%s", r)
	}
	if cs := containers(t, b.cluster); len(cs) != 0 {
		t.Errorf("containers left once berth rm returned: %s", describeContainers(cs))
	}
	apps := b.cli(t, "apps")
	if apps.code != 0 || strings.Contains(apps.stdout, "gone") {
		t.Errorf("berth apps still lists the app:\n%s", apps)
	}
	if code, body := b.request(t, "GET", "/v1/apps/gone", nil, ""); code != 404 {
		t.Errorf("GET /v1/apps/gone: %d %s, want 404", code, body)
	}
	if insts := b.instances(t, "gone"); len(insts) != 0 {
		t.Errorf("instances left: %s", describe(insts))
	}
	if !hasEvent(b.events(t, "gone"), "", "removed") {
		t.Errorf("no removed event for the app")
	}
}

// TestRestartAdoptsContainers restarts berth: its containers keep running
// and are adopted, not replaced.
func TestRestartAdoptsContainers(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	b.deployHealthy(t, "steady", 3)
	before := containers(t, b.cluster)
	if len(before) != 3 {
		t.Fatalf("before the restart: %s", describeContainers(before))
	}
	startedAt := map[string]string{}
	for _, c := range before {
		startedAt[c.ID] = dockerInspect(t, c.ID, "{{.State.StartedAt}}")
	}
	startedEvents := countEvents(b.events(t, "steady"), "started")

	b.restart(t)

	waitFor(t, 30*time.Second, func() (bool, string) {
		insts := b.instances(t, "steady")
		return len(insts) == 3 && countRoutable(insts) == 3, describe(insts)
	})
	// Give the new agent time to look at everything (it adopts on its first
	// list, and its engine events and resync follow).
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		cs := containers(t, b.cluster)
		if !sameIDs(cs, before) {
			t.Fatalf("containers changed after the restart: before %s, now %s", describeContainers(before), describeContainers(cs))
		}
		time.Sleep(250 * time.Millisecond)
	}
	after := containers(t, b.cluster)
	for _, c := range after {
		if c.State != "running" {
			t.Errorf("container %s of %s is %s", c.ID[:12], c.Instance, c.State)
		}
		if got := dockerInspect(t, c.ID, "{{.State.StartedAt}}"); got != startedAt[c.ID] {
			t.Errorf("container %s of %s was restarted: StartedAt %s, before %s", c.ID[:12], c.Instance, got, startedAt[c.ID])
		}
	}
	rows := b.ps(t, "steady")
	running := 0
	for _, r := range rows {
		if r.State == "running" && r.Address != "-" && r.Restarts == "0" {
			running++
		}
	}
	if len(rows) != 3 || running != 3 {
		t.Errorf("berth ps after the restart: want 3 running rows without restarts: %+v", rows)
	}
	if n := countEvents(b.events(t, "steady"), "started"); n != startedEvents {
		t.Errorf("adopting the containers produced %d new started events", n-startedEvents)
	}
}

// sameIDs reports whether two container lists hold the same containers.
func sameIDs(a, b []container) bool {
	ids := func(cs []container) string {
		s := make([]string, len(cs))
		for i, c := range cs {
			s[i] = c.ID
		}
		sort.Strings(s)
		return strings.Join(s, ",")
	}
	return ids(a) == ids(b)
}

func hasEvent(evs []event, inst, kind string) bool {
	for _, e := range evs {
		if e.Instance == inst && e.Kind == kind {
			return true
		}
	}
	return false
}

func countEvents(evs []event, kind string) int {
	n := 0
	for _, e := range evs {
		if e.Kind == kind {
			n++
		}
	}
	return n
}
