package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Source is the directory a build is made from, and its git work tree
// when it is in one.
type Source struct {
	Dir    string // absolute
	Root   string // top of the git work tree; "" outside git
	Prefix string // Dir within Root, slash-separated, "/" at its end; "" at the top
	Commit string // HEAD's full id
	// Changes are `git status --porcelain` lines about Dir: what HEAD
	// lacks (modified, added, deleted or untracked files).
	Changes []string

	commonDir string // the repository's (shared by linked work trees)
}

// Git reports whether the source is in a git work tree.
func (s Source) Git() bool { return s.Root != "" }

// Inspect finds out whether dir is in a git work tree and, if it is, its
// commit and uncommitted changes. A directory outside git is a plain
// source; one in a work tree without a commit is an error.
func Inspect(ctx context.Context, dir string) (Source, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Source{}, err
	}
	st, err := os.Stat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return Source{}, fmt.Errorf("%s does not exist", dir)
	}
	if err != nil {
		return Source{}, err
	}
	if !st.IsDir() {
		return Source{}, fmt.Errorf("%s is not a directory", dir)
	}
	s := Source{Dir: abs}
	if _, err := exec.LookPath("git"); err != nil {
		if inGitTree(abs) {
			return Source{}, fmt.Errorf("%s is in a git work tree, but git is not installed (Debian: apt-get install git)", dir)
		}
		return s, nil
	}
	// One git for four answers: outside a work tree (or inside .git
	// itself) the first is not "true", or --show-toplevel fails.
	out, err := git(ctx, abs, "rev-parse", "--is-inside-work-tree", "--show-toplevel", "--show-prefix", "--git-common-dir")
	lines := strings.Split(out, "\n")
	if err != nil || lines[0] != "true" || len(lines) != 4 {
		return s, nil
	}
	s.Root, s.Prefix, s.commonDir = lines[1], lines[2], lines[3] // the top's prefix is an empty line
	if !filepath.IsAbs(s.commonDir) {
		s.commonDir = filepath.Join(abs, s.commonDir)
	}
	if s.Commit, err = git(ctx, abs, "rev-parse", "--verify", "--quiet", "HEAD^{commit}"); err != nil || s.Commit == "" {
		return Source{}, fmt.Errorf("the git work tree at %s has no commit yet: commit first (or build the files as they are with --dirty)", s.Root)
	}
	status, err := git(ctx, abs, "status", "--porcelain", "--", ".")
	if err != nil {
		return Source{}, err
	}
	if status != "" {
		s.Changes = strings.Split(status, "\n")
	}
	return s, nil
}

// inGitTree reports whether dir or a parent holds a .git.
func inGitTree(dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, ".git")); err == nil {
			return true
		}
		if filepath.Dir(d) == d {
			return false
		}
	}
}

// WriteCommit writes the build context of the commit's tree at the
// source's directory to w: `git archive` (only what is committed:
// untracked and ignored files are left out), then .dockerignore as
// committed applies. Root may be a bare repository.
func (s Source) WriteCommit(ctx context.Context, w io.Writer, max int64) (Info, error) {
	ignore, err := s.committedIgnore(ctx)
	if err != nil {
		return Info{}, err
	}
	args := []string{"-C", s.Root, "archive", "--format=tar", s.Commit}
	if s.Prefix != "" {
		args = append(args, "--", s.Prefix)
	}
	cmd := exec.CommandContext(ctx, "git", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return Info{}, err
	}
	if err := cmd.Start(); err != nil {
		return Info{}, fmt.Errorf("git archive: %w", err)
	}
	info, ferr := FilterTar(w, out, s.Prefix, ignore, max)
	_, _ = io.Copy(io.Discard, out) // let git finish when the filter stopped early
	werr := cmd.Wait()
	switch {
	case ferr != nil:
		return Info{}, ferr
	case werr != nil:
		return Info{}, fmt.Errorf("git archive %s: %w: %s", s.Commit, werr, strings.TrimSpace(stderr.String()))
	}
	return info, nil
}

// git runs git in dir and returns its output without the last newline.
func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if msg := strings.TrimSpace(stderr.String()); errors.As(err, &ee) && msg != "" {
			return "", fmt.Errorf("git %s: %s", strings.Join(args, " "), msg)
		}
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimRight(stdout.String(), "\n"), nil
}
