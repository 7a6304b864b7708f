package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// The sample context: the demo server (examples/demo, its static binary
// next to the Dockerfile) with an asset of random bytes and a file of
// random bytes that changes before every build, each COPY a layer of its
// own, the fresh file last: a build rebuilds that layer only, and a push
// uploads it only, on both sides.
const dockerfile = `# berth's bench/builds: examples/demo with an asset, and a fresh file per build
FROM scratch
COPY demo /demo
COPY asset.bin /srv/asset.bin
COPY fresh.bin /srv/fresh.bin
EXPOSE 8080
ENTRYPOINT ["/demo"]
`

// dockerignore keeps the repository out of docker build's context (git
// archive, berth build's, has no .git anyway): both sides send the same
// files.
const dockerignore = ".git\n"

// repo is a git work tree of the sample context.
type repo struct {
	dir     string
	commits int
}

// newRepo makes the sample context in dir and commits it.
func (b *bench) newRepo(ctx context.Context, dir string) (*repo, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for _, f := range [][2]string{{b.demoBin, "demo"}, {b.asset, "asset.bin"}} {
		if err := copyFile(f[0], filepath.Join(dir, f[1])); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte(dockerignore), 0o644); err != nil {
		return nil, err
	}
	if err := randomFile(filepath.Join(dir, "fresh.bin"), *freshMiB); err != nil {
		return nil, err
	}
	r := &repo{dir: dir}
	if _, err := r.git(ctx, "init", "-q", "-b", "main"); err != nil {
		return nil, err
	}
	if _, err := r.git(ctx, "add", "."); err != nil {
		return nil, err
	}
	if _, err := r.git(ctx, "commit", "-q", "-m", "the sample context"); err != nil {
		return nil, err
	}
	return r, nil
}

// fresh writes new random bytes into fresh.bin and commits them; it
// returns the commit.
func (r *repo) fresh(ctx context.Context, what string) (string, error) {
	if err := randomFile(filepath.Join(r.dir, "fresh.bin"), *freshMiB); err != nil {
		return "", err
	}
	r.commits++
	if _, err := r.git(ctx, "commit", "-q", "-a", "-m", fmt.Sprintf("%d: new fresh.bin (%s)", r.commits, what)); err != nil {
		return "", err
	}
	return r.git(ctx, "rev-parse", "HEAD")
}

// git runs git in the work tree, as a committer without prompts.
func (r *repo) git(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", r.dir, "-c", "user.name=bench", "-c", "user.email=bench@example.org"}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=/bin/false")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// contextBytes is the size of the files docker build and berth build send.
func (r *repo) contextBytes() int64 {
	var n int64
	for _, f := range []string{"demo", "asset.bin", "fresh.bin", "Dockerfile", ".dockerignore"} {
		if st, err := os.Stat(filepath.Join(r.dir, f)); err == nil {
			n += st.Size()
		}
	}
	return n
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// appSpec is what the bench reads of the app spec it deploys.
type appSpec struct {
	path     string
	text     []byte
	Name     string   `json:"name"`
	Replicas int      `json:"replicas"`
	Routes   []string `json:"routes"`
	Image    string   `json:"image"`
	Health   struct {
		HTTP        string `json:"http"`
		Interval    string `json:"interval"`
		StartPeriod string `json:"start_period"`
	} `json:"health"`
}

func readSpec(path string) (appSpec, error) {
	s := appSpec{path: path}
	text, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("the app spec (run the bench from the repository root): %w", err)
	}
	if err := yaml.Unmarshal(text, &s); err != nil {
		return s, fmt.Errorf("%s: %w", path, err)
	}
	s.text = text
	switch {
	case s.Name == "" || len(s.Routes) == 0 || s.Replicas < 1:
		return s, fmt.Errorf("%s: want an app with a name, a route and replicas", path)
	case s.Image != baseImage:
		return s, fmt.Errorf("%s: its image is %s; the bench deploys it first with %s", path, s.Image, baseImage)
	}
	return s, nil
}
