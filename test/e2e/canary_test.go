package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"
)

// canaryClient is one user of the gateway, with a cookie jar of its own.
type canaryClient struct {
	c     *http.Client
	sides map[string]int // "canary" or "stable" -> requests
}

func newCanaryClient() *canaryClient {
	jar, _ := cookiejar.New(nil)
	return &canaryClient{c: &http.Client{Jar: jar, Timeout: 10 * time.Second}, sides: map[string]int{}}
}

// get sends GET / (Host host) and says which side answered: demo:2
// answers with version=2.
func (cc *canaryClient) get(b *berth, host string) (string, error) {
	req, _ := http.NewRequest("GET", "http://"+b.gwAddr+"/", nil)
	req.Host = host
	resp, err := cc.c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("%d %q", resp.StatusCode, body)
	}
	side := "stable"
	if strings.Contains(string(body), "version=2") {
		side = "canary"
	}
	if rev := resp.Header.Get("X-Berth-Revision"); rev == "" {
		return side, fmt.Errorf("no X-Berth-Revision header in the answer")
	}
	cc.sides[side]++
	return side, nil
}

// getHeader sends GET / with one extra header and returns the answer.
func gwGetHeader(b *berth, host, key, value string) (int, string, http.Header, error) {
	req, _ := http.NewRequest("GET", "http://"+b.gwAddr+"/", nil)
	req.Host = host
	if key != "" {
		req.Header.Set(key, value)
	}
	resp, err := gwClient.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header, nil
}

// A canary at 20%: smoke tests reach it directly before any weight
// matters, 100 clients with cookies split about 1 in 5 and each stays on
// its side, status shows the traffic, abort sends every client back to
// stable; a second canary is promoted to all replicas; a canary that
// answers 500 is aborted by itself and marked bad. No request of the
// healthy canaries fails.
func TestCanary(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	const host = "canary.e2e.test"
	v1 := routedSpec("can", 3, []string{host}, "update: {progress_deadline: 30s}\n")
	v2 := strings.Replace(v1, imageDemo1, imageDemo2, 1)
	b.mustDeploy(t, v1)
	b.waitRouted(t, host, "can")
	l := b.startLoad(host, 20*time.Millisecond)

	// The canary: 1 instance of revision 2, 20% of the traffic, promoted by hand.
	r := b.deploy(t, strings.Replace(v2, "update: {progress_deadline: 30s}", "update: {progress_deadline: 30s, canary: {duration: 0s}}", 1), "--canary", "20%")
	if r.code != 0 || !strings.Contains(r.stdout, "canary: 1 instance of revision 2 with 20% of the traffic, beside the stable revision 1") ||
		!strings.Contains(r.stdout, "can: canary serving") {
		t.Fatalf("deploy --canary 20%%:\n%s", r)
	}
	insts := b.waitRoutable(t, "can", 4)
	t.Logf("canary running: %s", describe(insts))

	// Direct: the header and the rev-N host reach one revision only.
	for _, c := range []struct{ host, key, value, want string }{
		{host, "X-Berth-Revision", "2", "version=2"},
		{"rev-2." + host, "", "", "version=2"},
		{host, "X-Berth-Revision", "1", "GREETING"},
	} {
		for range 5 {
			code, body, h, err := gwGetHeader(b, c.host, c.key, c.value)
			if err != nil || code != 200 || !strings.Contains(body, c.want) || (c.want == "GREETING" && strings.Contains(body, "version=2")) {
				t.Fatalf("GET Host %s %s: %s: %d %q %v; want %q", c.host, c.key, c.value, code, body, err, c.want)
			}
			if h.Get("Set-Cookie") != "" {
				t.Errorf("a direct request got a cookie: %s", h.Get("Set-Cookie"))
			}
		}
	}
	if code, body, _, _ := gwGetHeader(b, host, "X-Berth-Revision", "9"); code != 503 || !strings.Contains(body, "no healthy instance of revision 9") {
		t.Errorf("X-Berth-Revision: 9: %d %q; want 503 naming revision 9", code, body)
	}

	// 100 clients, 10 requests each.
	clients := make([]*canaryClient, 100)
	onCanary := 0
	for i := range clients {
		cc := newCanaryClient()
		clients[i] = cc
		for range 10 {
			if _, err := cc.get(b, host); err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
		}
		if len(cc.sides) != 1 {
			t.Fatalf("client %d was served by both sides: %v", i, cc.sides)
		}
		if cc.sides["canary"] > 0 {
			onCanary++
		}
	}
	// 100 clients at 20%: 20 expected, standard deviation 4; 8-32 is 3 of them.
	t.Logf("%d of 100 clients on the canary", onCanary)
	if onCanary < 8 || onCanary > 32 {
		t.Errorf("%d of 100 clients on the canary at 20%%: want 8-32", onCanary)
	}
	waitFor(t, 20*time.Second, func() (bool, string) {
		r := b.cli(t, "rollout", "status", "can")
		return r.code == 0 && strings.Contains(r.stdout, "can: revision 2, canary") && strings.Contains(r.stdout, "canary") &&
			canaryRequests(r.stdout) >= int64(onCanary*10), r.String()
	})
	t.Logf("berth rollout status can:\n%s", b.cli(t, "rollout", "status", "can").stdout)

	// Abort: every client is back on stable.
	if r := b.cli(t, "rollout", "abort", "can"); r.code != 0 || !strings.Contains(r.stdout, "canary aborted") {
		t.Fatalf("berth rollout abort can:\n%s", r)
	}
	waitFor(t, 30*time.Second, func() (bool, string) {
		insts := b.instances(t, "can")
		return len(insts) == 3 && countRoutable(insts) == 3 && insts[0].Revision == 1, describe(insts)
	})
	for i, cc := range clients {
		cc.sides = map[string]int{}
		for range 3 {
			if side, err := cc.get(b, host); err != nil || side != "stable" {
				t.Fatalf("client %d after the abort: %s %v; want stable", i, side, err)
			}
		}
	}
	h := b.history(t, "can")
	if h[0].Revision != 3 || h[0].RollbackOf != 1 || h[1].Outcome != "aborted" || h[1].Bad {
		t.Errorf("history after the abort:\n%s", describeHistory(h))
	}
	if r := b.cli(t, "rollout", "promote", "can"); r.code == 0 || !strings.Contains(r.stderr, "no canary in progress") {
		t.Errorf("promote with no canary: want a refusal:\n%s", r)
	}

	// A canary promoted: a rolling update to 3 replicas of demo:2.
	if r := b.deploy(t, v2, "--canary", "1"); r.code != 0 || !strings.Contains(r.stdout, "canary serving") {
		t.Fatalf("deploy --canary 1:\n%s", r)
	}
	if r := b.cli(t, "rollout", "promote", "can"); r.code != 0 || !strings.Contains(r.stdout, "promoted") {
		t.Fatalf("berth rollout promote can:\n%s", r)
	}
	waitFor(t, 60*time.Second, func() (bool, string) {
		h := b.history(t, "can")
		insts := b.instances(t, "can")
		return h[0].Revision == 4 && h[0].Outcome == "rolled out" && len(insts) == 3 && countRoutable(insts) == 3 && insts[0].Revision == 4,
			describeHistory(h[:1]) + "; " + describe(insts)
	})
	sent, fails, _ := l.end()
	if len(fails) > 0 {
		t.Errorf("%d of %d requests through the gateway failed during the canaries, abort and promotion: %v", len(fails), sent, fails[:min(len(fails), 5)])
	}
	t.Logf("%d requests through the gateway during the canaries, none failed", sent)

	// A canary that answers 500 (its health check passes) is aborted by
	// itself once its requests show it, and marked bad.
	v5 := strings.Replace(v1, `GREETING: "hi from e2e"`, `GREETING: "hi from e2e", ROOT_STATUS: "500"`, 1)
	if r := b.deploy(t, v5, "--canary", "50%"); r.code != 0 {
		t.Fatalf("deploy of a canary that fails its requests:\n%s", r)
	}
	start := time.Now()
	waitFor(t, 60*time.Second, func() (bool, string) {
		for range 10 {
			gwGetHeader(b, host, "", "")
		}
		h := b.history(t, "can")
		return len(h) >= 6 && h[1].Revision == 5 && h[1].Outcome == "reverted" && h[1].Bad, describeHistory(h[:min(len(h), 2)])
	})
	h = b.history(t, "can")
	t.Logf("the failing canary was aborted %s after it served: %s", time.Since(start).Round(100*time.Millisecond), h[1].Reason)
	if !strings.Contains(h[1].Reason, "requests failed") || h[0].RollbackOf != 4 {
		t.Errorf("history after the automatic abort:\n%s", describeHistory(h[:2]))
	}
	if r := b.deploy(t, v5); r.code == 0 || !strings.Contains(r.stderr, "reverted as bad") {
		t.Errorf("deploying the failed canary's spec again: want a refusal:\n%s", r)
	}
}

// canaryRequests reads the REQUESTS column of the canary row of berth
// rollout status.
func canaryRequests(out string) int64 {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && f[1] == "canary" {
			var n int64
			fmt.Sscan(f[5], &n)
			return n
		}
	}
	return -1
}
