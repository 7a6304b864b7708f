package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// badSpecYAML is a valid small spec in YAML with some top-level keys
// replaced (or added).
func badSpecYAML(name string, over map[string]string) string {
	keys := []string{"name", "image", "port", "replicas", "resources", "health"}
	vals := map[string]string{
		"name": name, "image": imageDemo1, "port": "8080", "replicas": "1",
		"resources": "{cpu: 100m, memory: 32Mi}", "health": healthSpec,
	}
	for k, v := range over {
		if _, ok := vals[k]; !ok {
			keys = append(keys, k)
		}
		vals[k] = v
	}
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, "%s: %s\n", k, vals[k])
	}
	return sb.String()
}

// badSpecJSON is the same in JSON.
func badSpecJSON(name string, over map[string]any) string {
	spec := map[string]any{
		"name": name, "image": imageDemo1, "port": 8080, "replicas": 1,
		"resources": map[string]any{"cpu": "100m", "memory": "32Mi"},
		"health":    map[string]any{"http": "/healthz", "interval": "500ms", "timeout": "500ms", "retries": 2, "start_period": "5s"},
	}
	for k, v := range over {
		spec[k] = v
	}
	b, err := json.Marshal(spec)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func health(interval string) map[string]any {
	return map[string]any{"http": "/healthz", "interval": interval, "timeout": "500ms", "retries": 2, "start_period": "5s"}
}

// TestBadInputsAreRejected sends invalid specs over the API and the CLI:
// each is refused with a JSON error naming the field, and nothing is stored.
func TestBadInputsAreRejected(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	big := strings.Repeat("x", 1<<20+1024)
	cases := []struct {
		name       string // test case
		app        string // {name} in the URL
		yaml, json string // bodies ("" skips that encoding)
		code       int
		field      string // "" when no field is at fault
	}{
		{"malformed", "bad", "name: bad\nimage: [berth/demo:1\n  port: {\n", `{"name": "bad", "image": "berth/demo:1"`, 400, ""},
		{"unknown-field", "bad", badSpecYAML("bad", map[string]string{"colour": "blue"}), badSpecJSON("bad", map[string]any{"colour": "blue"}), 400, "colour"},
		{"name-not-dns-label", "Bad_Name", badSpecYAML("Bad_Name", nil), badSpecJSON("Bad_Name", nil), 400, "name"},
		{"memory-1Mi", "bad", badSpecYAML("bad", map[string]string{"resources": "{cpu: 100m, memory: 1Mi}"}),
			badSpecJSON("bad", map[string]any{"resources": map[string]any{"cpu": "100m", "memory": "1Mi"}}), 400, "resources.memory"},
		{"memory-100Ti", "bad", badSpecYAML("bad", map[string]string{"resources": "{cpu: 100m, memory: 100Ti}"}),
			badSpecJSON("bad", map[string]any{"resources": map[string]any{"cpu": "100m", "memory": "100Ti"}}), 400, "resources.memory"},
		{"replicas-1001", "bad", badSpecYAML("bad", map[string]string{"replicas": "1001"}), badSpecJSON("bad", map[string]any{"replicas": 1001}), 400, "replicas"},
		{"replicas-negative", "bad", badSpecYAML("bad", map[string]string{"replicas": "-1"}), badSpecJSON("bad", map[string]any{"replicas": -1}), 400, "replicas"},
		{"cpu-abc", "bad", badSpecYAML("bad", map[string]string{"resources": `{cpu: abc, memory: 32Mi}`}),
			badSpecJSON("bad", map[string]any{"resources": map[string]any{"cpu": "abc", "memory": "32Mi"}}), 400, "resources.cpu"},
		{"interval-2x", "bad", badSpecYAML("bad", map[string]string{"health": "{http: /healthz, interval: 2x, timeout: 500ms, retries: 2}"}),
			badSpecJSON("bad", map[string]any{"health": health("2x")}), 400, "health.interval"},
		{"body-over-1MiB", "bad", badSpecYAML("bad", map[string]string{"labels": "{pad: " + big + "}"}),
			badSpecJSON("bad", map[string]any{"labels": map[string]any{"pad": big}}), 413, ""},
	}
	for _, c := range cases {
		for _, enc := range []struct{ kind, ct, body string }{
			{"yaml", "application/yaml", c.yaml},
			{"json", "application/json", c.json},
		} {
			if enc.body == "" {
				continue
			}
			t.Run(c.name+"/"+enc.kind, func(t *testing.T) {
				code, data := b.request(t, "PUT", "/v1/apps/"+c.app, []byte(enc.body), enc.ct)
				var e apiError
				if err := json.Unmarshal(data, &e); err != nil {
					t.Fatalf("answer %d is not a JSON error: %v: %.300s", code, err, data)
				}
				if code != c.code || e.Error == "" || e.Field != c.field {
					t.Errorf("PUT /v1/apps/%s (%s): got %d %s; want %d with an error naming field %q", c.app, c.name, code, strings.TrimSpace(string(data)), c.code, c.field)
				} else {
					t.Logf("%d field=%q error=%q", code, e.Field, e.Error)
				}
				if c.field != "" && !strings.Contains(e.Error, c.field) {
					t.Errorf("the message %q does not name the field %q", e.Error, c.field)
				}
			})
		}
	}

	// The CLI refuses too, naming the field.
	dir := t.TempDir()
	for _, c := range []struct{ file, spec, field string }{
		{"memory.yaml", badSpecYAML("bad", map[string]string{"resources": "{cpu: 100m, memory: 1Mi}"}), "resources.memory"},
		{"unknown.yaml", badSpecYAML("bad", map[string]string{"colour": "blue"}), "colour"},
		{"replicas.yaml", badSpecYAML("bad", map[string]string{"replicas": "1001"}), "replicas"},
	} {
		path := filepath.Join(dir, c.file)
		if err := os.WriteFile(path, []byte(c.spec), 0o644); err != nil {
			t.Fatal(err)
		}
		r := b.cli(t, "deploy", "-f", path)
		if r.code == 0 || !strings.Contains(r.stderr, c.field) {
			t.Errorf("berth deploy -f %s: want a non-zero exit naming %q on stderr:\n%s", c.file, c.field, r)
		}
	}

	// Nothing was stored.
	var apps list[json.RawMessage]
	b.getJSON(t, "/v1/apps", &apps)
	if len(apps.Items) != 0 {
		t.Errorf("GET /v1/apps lists %d apps after only bad inputs: %s", len(apps.Items), apps.Items)
	}
	if insts := b.instances(t, ""); len(insts) != 0 {
		t.Errorf("instances exist after only bad inputs: %s", describe(insts))
	}
	if cs := containers(t, b.cluster); len(cs) != 0 {
		t.Errorf("containers exist after only bad inputs: %s", describeContainers(cs))
	}
}

// TestAuth checks that the API wants the token, and /healthz does not.
func TestAuth(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	for _, c := range []struct{ name, auth string }{
		{"no token", ""},
		{"wrong token", "Bearer " + strings.Repeat("0", len(b.token))},
		{"token without Bearer", b.token},
		{"token with a suffix", "Bearer " + b.token + "x"},
	} {
		code, data, err := b.rawRequest("GET", "/v1/apps", nil, "", c.auth)
		if err != nil {
			t.Fatal(err)
		}
		var e apiError
		if code != 401 || json.Unmarshal(data, &e) != nil || e.Error == "" {
			t.Errorf("GET /v1/apps with %s: %d %s; want 401 with a JSON error", c.name, code, data)
		}
		code, _, err = b.rawRequest("PUT", "/v1/apps/x", []byte(badSpecJSON("x", nil)), "application/json", c.auth)
		if err != nil || code != 401 {
			t.Errorf("PUT /v1/apps/x with %s: %d %v; want 401", c.name, code, err)
		}
	}
	if code, data, err := b.rawRequest("GET", "/healthz", nil, "", ""); err != nil || code != 200 {
		t.Errorf("GET /healthz without a token: %d %s %v; want 200", code, data, err)
	}
	if code, _, err := b.rawRequest("GET", "/v1/apps", nil, "", "Bearer "+b.token); err != nil || code != 200 {
		t.Errorf("GET /v1/apps with the token: %d %v; want 200", code, err)
	}
	// The CLI with a wrong token fails.
	r := b.cliEnv(t, []string{"BERTH_ADDR=" + b.addr, "BERTH_TOKEN=wrong"}, "apps")
	if r.code == 0 || !strings.Contains(r.stderr, "token") {
		t.Errorf("berth apps with a wrong token: want a non-zero exit mentioning the token:\n%s", r)
	}
	var apps list[json.RawMessage]
	b.getJSON(t, "/v1/apps", &apps)
	if len(apps.Items) != 0 {
		t.Errorf("unauthenticated PUTs stored apps: %s", apps.Items)
	}
}

// TestMissingImage deploys an image that exists nowhere.
func TestMissingImage(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	r := b.deploy(t, demoSpec("nope", "berth/nope:1", 1), "--timeout", "90s")
	if r.code == 0 || !strings.Contains(r.stderr, "berth/nope:1") {
		t.Errorf("berth deploy of a missing image: want a non-zero exit naming the image:\n%s", r)
	}
	rows := b.ps(t, "nope")
	if len(rows) != 1 || rows[0].State != "failed" || !strings.Contains(rows[0].Info, "berth/nope:1") {
		t.Errorf("berth ps: want nope-1 failed with a message naming berth/nope:1: %+v", rows)
	}

	failed := func() int {
		n := 0
		for _, e := range b.events(t, "nope") {
			if e.Instance == "nope-1" && e.Kind == "failed" {
				n++
			}
		}
		return n
	}
	attempts := func() int { // the agent logs every failed attempt
		return strings.Count(b.log(), `msg="instance failed" component=agent instance=nope-1`)
	}
	ev0, at0 := failed(), attempts()
	time.Sleep(10 * time.Second) // the observation window
	ev1, at1 := failed(), attempts()
	t.Logf("failed events: %d before, %d after 10s; failed attempts in berth's log: %d before, %d after", ev0, ev1, at0, at1)
	if ev1 < 1 {
		t.Errorf("no failed event for nope-1")
	}
	if ev1 >= 8 {
		t.Errorf("%d failed events for nope-1: berth retries a missing image in a tight loop", ev1)
	}
	if at1-at0 >= 8 {
		t.Errorf("%d attempts to start nope-1 within 10s: no backoff", at1-at0)
	}
	if cs := containers(t, b.cluster); len(cs) != 0 {
		t.Errorf("containers exist for a missing image: %s", describeContainers(cs))
	}
}

// TestCrashLoopBacksOff runs an instance that exits 300ms after each start.
func TestCrashLoopBacksOff(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	spec := `name: crash
image: berth/demo:1
env: {EXIT_AFTER: 300ms}
port: 8080
replicas: 1
resources: {cpu: 100m, memory: 32Mi}
health: {tcp: true, interval: 500ms, timeout: 500ms, retries: 2, start_period: 5s}
`
	r := b.deploy(t, spec, "--detach")
	if r.code != 0 {
		t.Fatalf("deploy --detach:\n%s", r)
	}
	// The clock starts when the first container has started (creating it
	// can take a few seconds on a busy machine).
	var inst instance
	waitFor(t, 30*time.Second, func() (bool, string) {
		insts := b.instances(t, "crash")
		if len(insts) != 1 {
			return false, describe(insts)
		}
		inst = insts[0]
		return inst.Status.ContainerID != "" || inst.Status.Restarts > 0, "want a container: " + inst.String()
	})
	start := time.Now()
	waitFor(t, 8*time.Second, func() (bool, string) {
		inst = b.instances(t, "crash")[0]
		return inst.Status.Restarts >= 2, "want at least 2 restarts: " + inst.String()
	})
	time.Sleep(time.Until(start.Add(8 * time.Second))) // the observation window
	inst = b.instances(t, "crash")[0]
	t.Logf("after %s: %s", time.Since(start).Round(time.Millisecond), inst)
	if inst.Status.Restarts < 2 || inst.Status.Restarts > 5 {
		t.Errorf("after 8s of a crash loop: %d restarts, want 2-5 (exponential backoff)", inst.Status.Restarts)
	}
	if inst.Status.ExitCode == nil || *inst.Status.ExitCode != 1 {
		t.Errorf("last exit code: want 1: %s", inst)
	}
	rows := b.ps(t, "crash")
	if len(rows) != 1 || rows[0].LastExit != "1" || rows[0].Restarts == "0" {
		t.Errorf("berth ps: want crash-1 with LAST EXIT 1 and restarts: %+v", rows)
	}
	restarted := 0
	for _, e := range b.events(t, "crash") {
		if e.Kind == "restarted" {
			restarted++
		}
	}
	// Restarts counts exits; the restart after the last exit may still be
	// waiting out its backoff, or have come since inst was read.
	if n := inst.Status.Restarts; restarted < n-1 || restarted > n+1 {
		t.Errorf("%d restarted events after %d exits, want %d-%d", restarted, n, n-1, n+1)
	}
	if cs := containers(t, b.cluster); len(cs) != 1 {
		t.Errorf("want one container for the crashing instance: %s", describeContainers(cs))
	}
}

// TestKill9MidDeploy kills berth with SIGKILL while it deploys 6 replicas,
// at two moments, then starts it again: it must converge to exactly one
// container per instance.
func TestKill9MidDeploy(t *testing.T) {
	t.Parallel()
	moments := []struct {
		name string
		when func(containers, healthy int) bool
	}{
		{"first-container", func(cs, healthy int) bool { return cs >= 1 && healthy < 6 }},
		{"some-healthy", func(cs, healthy int) bool { return cs >= 1 && healthy >= 1 && healthy < 6 }},
	}
	for _, m := range moments {
		t.Run(m.name, func(t *testing.T) {
			b := startBerth(t)
			if r := b.deploy(t, demoSpec("k9", imageDemo1, 6), "--detach"); r.code != 0 {
				t.Fatalf("deploy --detach:\n%s", r)
			}
			killed := false
			deadline := time.Now().Add(30 * time.Second)
			var cs []container
			var insts []instance
			for time.Now().Before(deadline) {
				var err error
				if cs, err = containersErr(b.cluster); err != nil {
					t.Fatal(err)
				}
				if insts, err = b.instancesErr("k9"); err != nil {
					t.Fatal(err)
				}
				healthy := countRoutable(insts)
				if healthy == 6 {
					break
				}
				if m.when(len(cs), healthy) {
					b.kill9(t)
					killed = true
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if !killed {
				t.Fatalf("missed the moment to kill berth: %s; %s", describe(insts), describeContainers(cs))
			}
			t.Logf("killed at: %s; %s", describe(insts), describeContainers(cs))
			// What is left behind while berth is down.
			left, _ := containersErr(b.cluster)
			t.Logf("while berth is down: %s", describeContainers(left))

			b.relaunch(t)
			var last string
			waitFor(t, 90*time.Second, func() (bool, string) {
				insts := b.instances(t, "k9")
				cs := containers(t, b.cluster)
				ok, msg := oneContainerPerInstance(insts, cs)
				last = msg
				return ok && len(insts) == 6 && countRoutable(insts) == 6, msg
			})
			// Still true a little later (nothing is being removed or added).
			time.Sleep(2 * time.Second)
			insts = b.instances(t, "k9")
			cs = containers(t, b.cluster)
			if ok, msg := oneContainerPerInstance(insts, cs); !ok || len(insts) != 6 || countRoutable(insts) != 6 {
				t.Errorf("converged (%s), then changed: %s", last, msg)
			}
			for _, i := range insts {
				code, body, err := curl(i.Status.Address, "/")
				if err != nil || code != 200 || !strings.HasPrefix(body, "hello from "+i.Name+".") {
					t.Errorf("%s at %s: %d %q %v", i.Name, i.Status.Address, code, body, err)
				}
			}
		})
	}
}

// oneContainerPerInstance checks that every instance has exactly one
// running container and no container is left without an instance.
func oneContainerPerInstance(insts []instance, cs []container) (bool, string) {
	msg := describe(insts) + "; " + describeContainers(cs)
	perInst := map[string][]container{}
	for _, c := range cs {
		perInst[c.Instance] = append(perInst[c.Instance], c)
	}
	for name, list := range perInst {
		if len(list) > 1 {
			return false, fmt.Sprintf("%d containers for %s: %s", len(list), name, msg)
		}
	}
	if len(cs) != len(insts) {
		return false, fmt.Sprintf("%d containers for %d instances: %s", len(cs), len(insts), msg)
	}
	for _, i := range insts {
		list := perInst[i.Name]
		if len(list) != 1 || list[0].State != "running" || list[0].ID != i.Status.ContainerID {
			return false, fmt.Sprintf("%s: want one running container matching its record: %s", i.Name, msg)
		}
	}
	return true, msg
}

// TestUnschedulable asks for more cpu than the node has.
func TestUnschedulable(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	var nodes struct {
		Items []struct {
			Name     string `json:"name"`
			Capacity struct {
				CPU json.Number `json:"cpu"`
			} `json:"capacity"`
		} `json:"items"`
	}
	b.getJSON(t, "/v1/nodes", &nodes)
	t.Logf("node %s: cpu %s", nodes.Items[0].Name, nodes.Items[0].Capacity.CPU)
	// 1500m fits once on a node of 2 or 3 cores: the other two cannot be placed.
	spec := `name: huge
image: berth/demo:1
port: 8080
replicas: 3
resources: {cpu: 1500m, memory: 32Mi}
health: ` + healthSpec + "\n"
	r := b.deploy(t, spec, "--timeout", "60s")
	if r.code == 0 || !strings.Contains(r.stderr, "insufficient cpu") {
		t.Errorf("berth deploy: want a non-zero exit with the reason 'insufficient cpu':\n%s", r)
	}
	deployed := time.Now()
	waitFor(t, 20*time.Second, func() (bool, string) {
		insts := b.instances(t, "huge")
		unplaced := 0
		for _, i := range insts {
			if i.Node == "" && strings.Contains(i.Reason, "insufficient cpu") {
				unplaced++
			}
		}
		return len(insts) == 3 && unplaced == 2, "want 2 instances unplaced for insufficient cpu: " + describe(insts)
	})
	rows := b.ps(t, "huge")
	unplaced := 0
	for _, row := range rows {
		if row.Node == "-" && strings.Contains(row.Info, "insufficient cpu") {
			unplaced++
		}
	}
	if len(rows) != 3 || unplaced != 2 {
		t.Errorf("berth ps: want 2 of 3 rows saying insufficient cpu: %+v", rows)
	}
	found := false
	for _, e := range b.events(t, "huge") {
		if e.Kind == "unschedulable" && strings.Contains(e.Message, "insufficient cpu") {
			found = true
		}
	}
	if !found {
		t.Errorf("no unschedulable event")
	}
	ev := b.cli(t, "events", "huge")
	if !regexp.MustCompile(`(?m)\shuge-\d+\s+unschedulable\s.*insufficient cpu`).MatchString(ev.stdout) {
		t.Errorf("berth events huge shows no unschedulable event:\n%s", ev.stdout)
	}
	// The instance that fits runs, as fast as any other: the agent must
	// learn of its placement although the other two, written in the same
	// transaction, are not on its node.
	if ok, msg := pollUntil(10*time.Second, func() (bool, string) {
		insts := b.instances(t, "huge")
		return countRoutable(insts) == 1, fmt.Sprintf("the placed instance is not running %s after the deploy: %s",
			time.Since(deployed).Round(time.Millisecond), describe(insts))
	}); ok {
		t.Logf("the placed instance became healthy %s after the deploy", time.Since(deployed).Round(100*time.Millisecond))
	} else {
		t.Errorf("%s", msg)
		waitFor(t, 30*time.Second, func() (bool, string) {
			insts := b.instances(t, "huge")
			return countRoutable(insts) == 1, describe(insts)
		})
		t.Errorf("the placed instance became healthy only %s after the deploy", time.Since(deployed).Round(100*time.Millisecond))
	}
	if cs := containers(t, b.cluster); len(cs) != 1 {
		t.Errorf("want 1 container: %s", describeContainers(cs))
	}
}

// TestStrayContainerIsRemoved creates containers with berth's labels by
// hand: the agent removes them and leaves its own alone.
func TestStrayContainerIsRemoved(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	keep := b.deployHealthy(t, "keep", 1)[0]

	var nodes list[node]
	b.getJSON(t, "/v1/nodes", &nodes)
	if len(nodes.Items) != 1 {
		t.Fatalf("want 1 node: %+v", nodes.Items)
	}
	nodeName := nodes.Items[0].Name
	labels := []string{"--label", "berth.cluster=" + b.cluster, "--label", "berth.node=" + nodeName}
	// A running stray (with an init, so that it stops on SIGTERM) and a
	// created, never started one.
	run := append([]string{"run", "-d", "--init", "--name", "e2e-ghost-1-" + b.cluster[:8], "--label", "berth.instance=ghost-1"}, labels...)
	run = append(run, imageBusybox, "sleep", "3600")
	if out, err := dockerCLI(30*time.Second, run...); err != nil {
		t.Fatalf("docker run: %v: %s", err, out)
	}
	create := append([]string{"create", "--name", "e2e-ghost-2-" + b.cluster[:8], "--label", "berth.instance=ghost-2"}, labels...)
	create = append(create, imageBusybox, "sleep", "3600")
	if out, err := dockerCLI(30*time.Second, create...); err != nil {
		t.Fatalf("docker create: %v: %s", err, out)
	}
	start := time.Now()
	waitFor(t, 16*time.Second, func() (bool, string) {
		g1 := containers(t, b.cluster, "berth.instance=ghost-1")
		g2 := containers(t, b.cluster, "berth.instance=ghost-2")
		return len(g1)+len(g2) == 0, fmt.Sprintf("strays left after %s: %s %s", time.Since(start).Round(time.Millisecond), describeContainers(g1), describeContainers(g2))
	})
	t.Logf("strays removed within %s", time.Since(start).Round(100*time.Millisecond))
	cs := containers(t, b.cluster)
	if len(cs) != 1 || cs[0].ID != keep.Status.ContainerID || cs[0].State != "running" {
		t.Errorf("the app's own container was touched: %s (want %s)", describeContainers(cs), keep.Status.ContainerID[:12])
	}
}
