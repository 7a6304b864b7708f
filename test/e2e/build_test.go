package e2e

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// gitIn runs git in dir as a test's committer would.
func gitIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=e2e", "-c", "user.email=e2e@example.org"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// demoRepo is a git repository of examples/demo as scripts/build-images.sh
// builds it (the static binary next to the Dockerfile), committed.
func demoRepo(t *testing.T) (dir, sha string) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git is not installed (scripts/docker-up.sh installs it): %v", err)
	}
	dir = t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, "demo"), "./examples/demo")
	build.Dir, build.Env = repoRoot, append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/demo: %v: %s", err, out)
	}
	df, err := os.ReadFile(filepath.Join(repoRoot, "examples", "demo", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "Dockerfile"), string(df))
	writeFile(t, filepath.Join(dir, ".dockerignore"), "*.md\n")
	gitIn(t, dir, "init", "-q")
	gitIn(t, dir, "add", ".")
	gitIn(t, dir, "commit", "-q", "-m", "demo")
	return dir, gitIn(t, dir, "rev-parse", "HEAD")
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fileInContainer reads one file of a container (running or not) with
// docker cp: the demo image is FROM scratch, there is no shell to cat it.
func fileInContainer(t *testing.T, id, path string) string {
	t.Helper()
	out, err := exec.Command("docker", "cp", id+":"+path, "-").Output()
	if err != nil {
		t.Fatalf("docker cp %s:%s: %v", id, path, err)
	}
	tr := tar.NewReader(strings.NewReader(string(out)))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("docker cp %s:%s: no file in the archive", id, path)
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			return string(b)
		}
	}
}

var builtLine = regexp.MustCompile(`(?m)^built (\S+) digest (sha256:[0-9a-f]{64}) in `)

// berth build makes an image of a git commit (tagged with it, the commit
// in /app/REVISION and the revision label), pushes it into berth's
// registry and with --deploy rolls it out; a dirty tree is refused
// without --dirty; a broken Dockerfile fails with its error in the log
// and deploys nothing; bad input is refused before anything is stored.
func TestBuildFromGit(t *testing.T) {
	t.Parallel()
	b := startBerth(t)
	repo, sha := demoRepo(t)

	// Bad input: refused at once, nothing stored.
	noDockerfile := t.TempDir()
	writeFile(t, filepath.Join(noDockerfile, "main.go"), "package main\n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"build", "Bad_Name", repo}, `APP: "Bad_Name" is not a DNS label`},
		{[]string{"build", "web", repo, "--deploy"}, "no app named web"},
		{[]string{"build", "web", noDockerfile}, "has no Dockerfile"},
	} {
		if r := b.cli(t, c.args...); r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("berth %s: want a failure saying %q:\n%s", strings.Join(c.args, " "), c.want, r)
		}
	}
	if r := b.cli(t, "builds"); strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("bad input left builds behind:\n%s", r)
	}

	// Build the commit and roll it out.
	b.mustDeploy(t, demoSpec("web", imageDemo1, 1))
	r := b.cli(t, "build", "web", repo, "--deploy")
	m := builtLine.FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil || m[1] != "web:"+sha {
		t.Fatalf("berth build --deploy: want exit 0 and 'built web:%s digest ...':\n%s", sha, r)
	}
	digest := m[2]
	for _, want := range []string{"Step 1/7 : FROM scratch", "which adds /app/REVISION and the label org.opencontainers.image.revision=" + sha, "berth: deployed web:" + sha + " as revision 2", "healthy at revision 2"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("berth build --deploy output lacks %q", want)
		}
	}
	var app struct {
		Revision    int64  `json:"revision"`
		ImageDigest string `json:"image_digest"`
		Spec        struct {
			Image string `json:"image"`
		} `json:"spec"`
	}
	b.getJSON(t, "/v1/apps/web", &app)
	if app.Spec.Image != "web:"+sha || app.ImageDigest != digest {
		t.Fatalf("app web after the build: image %s digest %s; want web:%s at %s", app.Spec.Image, app.ImageDigest, sha, digest)
	}
	var rows []psRow
	for _, r := range b.ps(t, "web") {
		if !strings.Contains(r.Info, "kept for a fast rollback") { // revision 1's, stopped
			rows = append(rows, r)
		}
	}
	if len(rows) != 1 || rows[0].State != "running" || rows[0].Rev != "2" {
		t.Fatalf("berth ps web: %+v; want one instance running at revision 2", rows)
	}
	insts := b.instances(t, "web")
	if len(insts) != 1 || !insts[0].routable() {
		t.Fatalf("instances of web: %s", describe(insts))
	}
	cid := insts[0].Status.ContainerID
	if got := fileInContainer(t, cid, "/app/REVISION"); got != sha {
		t.Errorf("/app/REVISION in the running container: %q; want %s", got, sha)
	}
	image := strings.TrimSpace(dockerInspect(t, cid, "{{.Config.Image}}"))
	t.Cleanup(func() { _, _ = dockerCLI(30*time.Second, "rmi", image) })
	if !strings.HasSuffix(image, "/web@"+digest) {
		t.Errorf("the container runs %s; want the pinned web@%s", image, digest)
	}
	if label := strings.TrimSpace(dockerInspect(t, cid, `{{index .Config.Labels "org.opencontainers.image.revision"}}`)); label != sha {
		t.Errorf("label org.opencontainers.image.revision: %q; want %s", label, sha)
	}
	if code, body, err := curl(insts[0].Status.Address, "/"); err != nil || code != 200 {
		t.Errorf("GET / of the built revision: %d %q %v", code, body, err)
	}
	r = b.cli(t, "builds", "web")
	if !regexp.MustCompile(`(?m)^\S+\s+web\s+` + sha[:12] + `\s+succeeded\s+` + digest[:19] + `\s`).MatchString(r.stdout) {
		t.Errorf("berth builds web lacks the build:\n%s", r)
	}

	// A dirty tree is refused, unless --dirty; an ignored file is no change
	// to the context but still one to git.
	writeFile(t, filepath.Join(repo, "NOTES.md"), "not committed\n")
	if r := b.cli(t, "build", "web", repo); r.code == 0 || !strings.Contains(r.stderr, "not committed") || !strings.Contains(r.stderr, "--dirty") {
		t.Errorf("a dirty tree: want a refusal naming --dirty:\n%s", r)
	}
	if r := b.cli(t, "build", "web", repo, "--dirty"); r.code != 0 || !strings.Contains(r.stdout, "built web:"+sha+"-dirty digest ") {
		t.Errorf("--dirty: want web:%s-dirty:\n%s", sha, r)
	}
	if err := os.Remove(filepath.Join(repo, "NOTES.md")); err != nil {
		t.Fatal(err)
	}

	// A broken Dockerfile: the build fails with the engine's error in its
	// log, and nothing is stored or deployed.
	writeFile(t, filepath.Join(repo, "Dockerfile"), "FROM scratch\nCOPY missing /missing\n")
	gitIn(t, repo, "commit", "-q", "-am", "broken")
	broken := gitIn(t, repo, "rev-parse", "HEAD")
	r = b.cli(t, "build", "web", repo, "--deploy")
	if r.code == 0 || !strings.Contains(r.stdout, "COPY failed") || !strings.Contains(r.stderr, "nothing was deployed") {
		t.Fatalf("a broken Dockerfile: want a failure with COPY failed in the log:\n%s", r)
	}
	b.getJSON(t, "/v1/apps/web", &app)
	if app.Spec.Image != "web:"+sha || app.ImageDigest != digest || app.Revision != 2 {
		t.Errorf("the failed build changed the app: image %s digest %s revision %d", app.Spec.Image, app.ImageDigest, app.Revision)
	}
	if code, body := b.request(t, "GET", "/v2/web/manifests/"+broken, nil, ""); code != 404 {
		t.Errorf("the registry has web:%s of the failed build: %d %s", broken, code, body)
	}
	r = b.cli(t, "builds", "web")
	if !regexp.MustCompile(`(?m)^(\S+)\s+web\s+` + broken[:12] + `\s+failed\s+-\s`).MatchString(r.stdout) {
		t.Errorf("berth builds web lacks the failed build:\n%s", r)
	}
	id := strings.Fields(strings.Split(r.stdout, "\n")[1])[0]
	if r := b.cli(t, "build", "logs", id); r.code != 0 || !strings.Contains(r.stdout, "COPY failed") {
		t.Errorf("berth build logs of the failed build:\n%s", r)
	}
	if insts := b.instances(t, "web"); len(insts) != 1 || insts[0].Status.ContainerID != cid || !insts[0].routable() {
		t.Errorf("the running instance changed: %s", describe(insts))
	}
}
