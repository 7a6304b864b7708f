package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var digestLine = regexp.MustCompile(`^sha256:[0-9a-f]{64}\n$`)

// buildLocalImage builds an image only this test has (a file of its own on
// top of the demo) in the machine's engine as ref, removed after the test.
func buildLocalImage(t *testing.T, ref string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nonce"), []byte(randomToken(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM "+imageDemo1+"\nCOPY nonce /nonce\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = dockerCLI(30*time.Second, "rmi", "-f", ref) })
	if out, err := dockerCLI(2*time.Minute, "build", "-q", "-t", ref, dir); err != nil {
		t.Fatalf("docker build: %v: %s", err, out)
	}
}

// removePulled removes what the machine's engine pulled of repo through
// the agent's cache (127.0.0.1:<port>/<repo>@<digest>).
func removePulled(t *testing.T, repo string) {
	out, _ := dockerCLI(30*time.Second, "images", "--digests", "--format", "{{.Repository}}@{{.Digest}}")
	for _, ref := range strings.Fields(out) {
		if strings.HasPrefix(ref, "127.0.0.1:") && strings.Contains(ref, "/"+repo+"@") {
			_, _ = dockerCLI(30*time.Second, "rmi", "-f", ref)
		}
	}
}

// berth image push copies an image of the local engine into berth's
// registry with the CLI's token (no docker login): the digest on stdout,
// progress on stderr, nothing sent twice; an app of it is pinned to that
// digest and berth image ls says who runs it. Mistakes are named: an image
// the engine lacks, an agent token, a bad --as, a missing repository.
func TestImagePush(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	repo := "e2e-" + b.cluster[:8] + "/pushed"
	local := "localhost:5999/" + repo + ":1" // a registry host: dropped by push
	buildLocalImage(t, local)
	t.Cleanup(func() { removePulled(t, repo) })

	r := b.cli(t, "image", "push", local)
	if r.code != 0 || !digestLine.MatchString(r.stdout) {
		t.Fatalf("image push: want exit 0 and the digest alone on stdout:\n%s", r)
	}
	digest := strings.TrimSpace(r.stdout)
	if !strings.Contains(r.stderr, "to "+repo+":1 in berth's registry") || !strings.Contains(r.stderr, " pushed\n") ||
		!regexp.MustCompile(`\d+ layers, [0-9.]+[KM]i`).MatchString(r.stderr) {
		t.Errorf("image push: the progress on stderr lacks the target, the blobs or the totals:\n%s", r.stderr)
	}
	again := b.cli(t, "image", "push", local)
	if again.code != 0 || strings.TrimSpace(again.stdout) != digest || strings.Contains(again.stderr, " pushed\n") ||
		!strings.Contains(again.stderr, "(0 blobs sent") {
		t.Errorf("a second push: want the same digest and nothing sent:\n%s", again)
	}
	if r := b.cli(t, "image", "push", local, "--as", repo+"-copy:v2"); r.code != 0 || strings.TrimSpace(r.stdout) != digest {
		t.Errorf("image push --as: want the same digest:\n%s", r)
	}

	// Deployed by its name in berth's registry, pinned to the pushed digest.
	b.mustDeploy(t, demoSpec("pushed", repo+":1", 1))
	var app appRecord
	b.getJSON(t, "/v1/apps/pushed", &app)
	if app.ImageDigest != digest {
		t.Fatalf("the app runs %q; want the pushed digest %s", app.ImageDigest, digest)
	}
	waitFor(t, 90*time.Second, func() (bool, string) {
		insts := b.instances(t, "pushed")
		return len(insts) == 1 && countRoutable(insts) == 1, describe(insts)
	})

	ls := b.cli(t, "image", "ls")
	short := digest[:len("sha256:")+12]
	row := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(repo) + `\s+1\s+` + short + `\s+[0-9.]+Mi\s+pushed r1 \(1 instance\)$`)
	copyRow := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(repo) + `-copy\s+v2\s+` + short + `\s+\S+\s+-$`)
	if ls.code != 0 || !strings.HasPrefix(ls.stdout, "REPOSITORY") || !row.MatchString(ls.stdout) || !copyRow.MatchString(ls.stdout) {
		t.Errorf("image ls: want both tags, the app's revision and instance:\n%s", ls)
	}
	if one := b.cli(t, "image", "ls", repo+"-copy"); one.code != 0 || strings.Contains(one.stdout, repo+" ") || !copyRow.MatchString(one.stdout) {
		t.Errorf("image ls REPO: want that repository only:\n%s", one)
	}

	for _, c := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"an image the engine lacks", nil, []string{"image", "push", repo + ":nosuch"},
			[]string{"is not in the local Docker engine"}},
		{"an agent token", []string{"BERTH_TOKEN=" + strings.TrimSpace(b.cli(t, "token", "create", "--role", "agent").stdout)},
			[]string{"image", "push", local, "--as", repo + ":agent"}, []string{"403 DENIED", "may only pull", "needs a user token"}},
		{"a bad --as", nil, []string{"image", "push", local, "--as", "example.org/x:1"}, []string{"--as example.org/x:1", "without a registry host"}},
		{"a digest without --as", nil, []string{"image", "push", repo + "@" + digest}, []string{"names a digest", "--as"}},
		{"a missing repository", nil, []string{"image", "ls", repo + "-nosuch"}, []string{"no repository " + repo + "-nosuch"}},
	} {
		env := append([]string{"BERTH_ADDR=" + b.addr, "BERTH_TOKEN=" + b.token}, c.env...)
		r := b.cliEnv(t, env, c.args...)
		if r.code == 0 {
			t.Errorf("%s: want a failure:\n%s", c.name, r)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("%s: stderr lacks %q:\n%s", c.name, w, r)
			}
		}
	}
	if ls := b.cli(t, "image", "ls", repo); strings.Contains(ls.stdout, "agent") {
		t.Errorf("the agent token's push stored a tag:\n%s", ls)
	}
}
