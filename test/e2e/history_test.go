package e2e

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// revisionRow is a revision as GET /v1/apps/{name}/revisions gives it.
type revisionRow struct {
	Revision   int64  `json:"revision"`
	Change     string `json:"change"`
	By         string `json:"by"`
	Template   int64  `json:"template"`
	RollbackOf int64  `json:"rollback_of"`
	Outcome    string `json:"outcome"`
	Bad        bool   `json:"bad"`
	Reason     string `json:"reason"`
	Spec       struct {
		Image string `json:"image"`
	} `json:"spec"`
}

func (b *berth) history(t *testing.T, app string) []revisionRow {
	t.Helper()
	var l struct {
		Items []revisionRow `json:"items"`
	}
	b.getJSON(t, "/v1/apps/"+app+"/revisions", &l)
	return l.Items
}

// A revision that never gets healthy is reverted by the server at its
// progress deadline and marked bad (deploying it again needs --force); a
// rollback goes back to the revision before; all of it under load
// through the gateway with no failed request; the history is kept across
// a kill -9 of berth.
func TestHistoryRevertAndRollback(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	const host = "hist.e2e.test"
	// A short deadline keeps the test short; 20s leaves a slow engine time
	// to start the kept containers on the rollback.
	v1 := routedSpec("hist", 3, []string{host}, "update: {progress_deadline: 20s}\n")
	v2 := strings.Replace(v1, "http: /healthz", "http: /nope", 1) // never healthy
	v3 := strings.Replace(v1, imageDemo1, imageDemo2, 1)
	b.mustDeploy(t, v1)
	b.waitRouted(t, host, "hist")
	l := b.startLoad(host, 20*time.Millisecond)

	// v2 fails: the deploy says it was reverted, and why.
	start := time.Now()
	r := b.deploy(t, v2)
	if r.code == 0 || !strings.Contains(r.stderr, "revision 2 reverted to the last good one (now revision 3") || !strings.Contains(r.stderr, "no new instance became healthy for 20s") {
		t.Fatalf("deploy of a revision that never gets healthy: want a failure saying it was reverted:\n%s", r)
	}
	t.Logf("reverted %s after the deploy", time.Since(start).Round(100*time.Millisecond))
	waitFor(t, 30*time.Second, func() (bool, string) {
		h := b.history(t, "hist")
		return len(h) == 3 && h[0].Outcome == "rolled out", describeHistory(h)
	})
	h := b.history(t, "hist")
	if h[1].Revision != 2 || h[1].Outcome != "reverted" || !h[1].Bad || h[0].RollbackOf != 1 || h[0].By != "berth (auto-revert)" || h[0].Template != 1 {
		t.Errorf("history after the revert:\n%s", describeHistory(h))
	}
	if insts := b.waitRoutable(t, "hist", 3); insts[0].Revision != 1 {
		t.Errorf("after the revert the instances run template %d, want 1 (the ones that never stopped)", insts[0].Revision)
	}

	// The bad spec again: refused without --force, nothing written.
	if r := b.deploy(t, v2); r.code == 0 || !strings.Contains(r.stderr, "reverted as bad") || !strings.Contains(r.stderr, "--force") {
		t.Errorf("deploying a bad revision's spec again: want a refusal naming --force:\n%s", r)
	}

	// v3 rolls out; rollback (default) returns to revision 3's spec.
	b.mustDeploy(t, v3)
	if r := b.cli(t, "rollback", "hist", "99"); r.code == 0 || !strings.Contains(r.stderr, "hist has no revision 99") {
		t.Errorf("rollback to a revision that does not exist:\n%s", r)
	}
	r = b.cli(t, "rollback", "hist")
	if r.code != 0 || !strings.Contains(r.stdout, "revision 5 accepted ("+imageDemo1) || !strings.Contains(r.stdout, "3/3 healthy at revision 5") {
		t.Fatalf("berth rollback hist:\n%s", r)
	}
	h = b.history(t, "hist")
	if len(h) != 5 || h[0].RollbackOf != 3 || h[0].Spec.Image != imageDemo1 || h[1].Outcome != "rolled back" {
		t.Errorf("history after the rollback:\n%s", describeHistory(h))
	}
	resp, err := b.gwGet(host, "/")
	if err != nil || resp.code != 200 || strings.Contains(resp.body, "version=2") {
		t.Errorf("the gateway after the rollback: %+v %v; want demo:1 answering", resp, err)
	}
	sent, fails, _ := l.end()
	if len(fails) > 0 {
		t.Errorf("%d of %d requests through the gateway failed during the revert, update and rollback: %v", len(fails), sent, fails[:min(len(fails), 5)])
	}
	t.Logf("%d requests through the gateway, none failed", sent)

	// history and diff as a user reads them.
	out := b.cli(t, "history", "hist").stdout
	for _, want := range []string{"REV  TIME", "revert to revision 1: revision 2 failed", "reverted, bad", "rollback to revision 3", "rolled back"} {
		if !strings.Contains(out, want) {
			t.Errorf("berth history lacks %q:\n%s", want, out)
		}
	}
	if d := b.cli(t, "diff", "hist", "1", "2").stdout; !strings.Contains(d, "-  http: /healthz") || !strings.Contains(d, "+  http: /nope") {
		t.Errorf("berth diff hist 1 2:\n%s", d)
	}

	// kill -9 and back: the same history.
	before, _ := json.Marshal(h)
	b.kill9(t)
	b.relaunch(t)
	after, _ := json.Marshal(b.history(t, "hist"))
	if !reflect.DeepEqual(before, after) {
		t.Errorf("history changed across kill -9:\nbefore %s\nafter  %s", before, after)
	}
}

func describeHistory(h []revisionRow) string {
	var b strings.Builder
	for _, r := range h {
		b.WriteString(strings.Join([]string{
			"rev", strconv.FormatInt(r.Revision, 10), r.Spec.Image, r.Change, "by", r.By, "template", strconv.FormatInt(r.Template, 10), r.Outcome,
		}, " "))
		if r.Bad {
			b.WriteString(" bad")
		}
		b.WriteString("\n")
	}
	return b.String()
}
