package e2e

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// gitPush runs git in dir with no credential prompts, so that a refused
// token fails instead of waiting for a password.
func gitPush(t *testing.T, dir string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=/bin/false")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("git %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// git push to berth builds the pushed commit and rolls it out, the build
// log and rollout shown as "remote:" lines; a push that fails to build is
// rejected with its error and deploys nothing; tokens are checked.
func TestGitPush(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	repo, _ := demoRepo(t)
	// A file over git's 1 MiB post buffer makes git send the pack chunked.
	blob := make([]byte, 2<<20)
	rand.Read(blob)
	if err := os.WriteFile(filepath.Join(repo, "assets.bin"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	gitIn(t, repo, "add", ".")
	gitIn(t, repo, "commit", "-q", "-m", "assets")
	gitIn(t, repo, "branch", "-M", "main")
	sha := gitIn(t, repo, "rev-parse", "HEAD")
	url := func(token, app string) string {
		return fmt.Sprintf("http://berth:%s@%s/git/%s.git", token, b.addr, app)
	}

	// Tokens: none, a wrong one, an agent's.
	agentToken := strings.TrimSpace(b.cli(t, "token", "create", "--role", "agent").stdout)
	for _, c := range []struct{ url, want string }{
		{"http://" + b.addr + "/git/web.git", "could not read Username"}, // challenged; no prompt here
		{url("wrong", "web"), "Authentication failed"},
		{url(agentToken, "web"), "403"},
		{url(b.token, "Bad_Name"), `app: "Bad_Name" is not a DNS label`},
	} {
		if r := gitPush(t, repo, "push", c.url, "main"); r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("git push %s: want a refusal saying %q:\n%s", c.url, c.want, r)
		}
	}
	// An app that does not exist: the push is rejected, nothing is built.
	if r := gitPush(t, repo, "push", url(b.token, "nope"), "main"); r.code == 0 || !strings.Contains(r.stderr, "no app named nope") ||
		!strings.Contains(r.stderr, "[remote rejected]") {
		t.Errorf("git push to an unknown app: want it rejected naming the app:\n%s", r)
	}
	if r := b.cli(t, "builds"); strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("refused pushes left builds behind:\n%s", r)
	}

	// The push builds and deploys; the gateway serves the new revision.
	b.mustDeploy(t, demoSpec("web", imageDemo1, 2)+"routes: [web.git.test]\n")
	gitIn(t, repo, "remote", "add", "berth", url(b.token, "web"))
	r := gitPush(t, repo, "push", "berth", "main")
	if r.code != 0 {
		t.Fatalf("git push berth main: exit %d:\n%s", r.code, r)
	}
	for _, want := range []string{
		"remote: context: commit " + sha[:12] + " of branch main",
		"remote: Step 1/7 : FROM scratch",
		"remote: berth: deployed web:" + sha + " as revision 2",
		"remote: web: 2/2 healthy at revision 2",
		"main -> main",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("git push output lacks %q:\n%s", want, r.stderr)
		}
	}
	insts := b.waitRoutable(t, "web", 2)
	for _, in := range insts {
		if in.Revision != 2 {
			t.Fatalf("instances after the push: %s", describe(insts))
		}
	}
	if got := fileInContainer(t, insts[0].Status.ContainerID, "/app/REVISION"); got != sha {
		t.Errorf("/app/REVISION: %q; want %s", got, sha)
	}
	image := strings.TrimSpace(dockerInspect(t, insts[0].Status.ContainerID, "{{.Config.Image}}"))
	t.Cleanup(func() { _, _ = dockerCLI(30*time.Second, "rmi", image) })
	if resp, err := b.gwGet("web.git.test", "/"); err != nil || resp.code != 200 {
		t.Fatalf("the gateway after the push: %+v %v", resp, err)
	}

	// A broken Dockerfile: rejected with the engine's error, the branch on
	// the server unmoved, nothing deployed, the good revision serving.
	writeFile(t, filepath.Join(repo, "Dockerfile"), "FROM scratch\nCOPY missing /missing\n")
	gitIn(t, repo, "commit", "-q", "-am", "broken")
	r = gitPush(t, repo, "push", "berth", "main")
	if r.code == 0 || !strings.Contains(r.stderr, "remote: COPY failed") || !strings.Contains(r.stderr, "nothing was deployed") ||
		!strings.Contains(r.stderr, "[remote rejected] main -> main (pre-receive hook declined)") {
		t.Fatalf("a broken build: want the push rejected with COPY failed:\n%s", r)
	}
	if got := gitPush(t, repo, "ls-remote", "berth", "refs/heads/main"); !strings.HasPrefix(got.stdout, sha) {
		t.Errorf("after the rejected push the server's main is %q; want %s", got.stdout, sha)
	}
	var app struct {
		Revision int64 `json:"revision"`
	}
	b.getJSON(t, "/v1/apps/web", &app)
	if app.Revision != 2 {
		t.Errorf("the rejected push changed the app: revision %d", app.Revision)
	}
	for range 5 {
		if resp, err := b.gwGet("web.git.test", "/"); err != nil || resp.code != 200 {
			t.Fatalf("the gateway after the rejected push: %+v %v", resp, err)
		}
	}

	// -o deploy=false builds without deploying; a tag is refused.
	gitIn(t, repo, "revert", "--no-edit", "HEAD")
	fixed := gitIn(t, repo, "rev-parse", "HEAD")
	r = gitPush(t, repo, "push", "-o", "deploy=false", "berth", "main")
	if r.code != 0 || !strings.Contains(r.stderr, "built web:"+fixed) || !strings.Contains(r.stderr, "not deployed") {
		t.Errorf("git push -o deploy=false: want a build and no deploy:\n%s", r)
	}
	b.getJSON(t, "/v1/apps/web", &app)
	if app.Revision != 2 {
		t.Errorf("a push with deploy=false deployed: revision %d", app.Revision)
	}
	gitIn(t, repo, "tag", "v1")
	if r := gitPush(t, repo, "push", "berth", "v1"); r.code == 0 || !strings.Contains(r.stderr, "refs/tags/v1 is not a branch") {
		t.Errorf("git push of a tag: want a refusal:\n%s", r)
	}
	// The repository can be cloned back with the token.
	clone := filepath.Join(t.TempDir(), "clone")
	if r := gitPush(t, repo, "clone", "-q", url(b.token, "web"), clone); r.code != 0 {
		t.Errorf("git clone: %s", r)
	} else if head := gitIn(t, clone, "rev-parse", "HEAD"); head != fixed {
		t.Errorf("the clone's HEAD is %s; want %s", head, fixed)
	}
}
