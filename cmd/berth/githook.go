package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"berth/internal/build"
	"berth/internal/client"
)

// The pre-receive hook of the repositories berth serves (internal/
// gitserve): `git push berth main` runs it in the server's repository
// before any ref moves. It builds the pushed commit and deploys it, as
// 'berth build APP --deploy' would; what it prints reaches the pusher as
// "remote:" lines, and its failure rejects the push. The server gives it
// its address, the app and the pusher's token in the environment.

const (
	hookAppEnv       = "BERTH_GIT_APP"
	hookServerPIDEnv = "BERTH_SERVER_PID"
	zeroCommit       = "0000000000000000000000000000000000000000"
	noDeployOpt      = "deploy=false"
)

func gitHookCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "git-hook",
		Short:  "The pre-receive hook of berth's git repositories (run by git, not by hand)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			app := os.Getenv(hookAppEnv)
			if app == "" {
				return fmt.Errorf("%s is not set: this command is run by git on berth's server", hookAppEnv)
			}
			ctx, cancel := context.WithTimeoutCause(cmd.Context(), hookDeadline, errHookDeadline)
			defer cancel()
			if pid, err := strconv.Atoi(os.Getenv(hookServerPIDEnv)); err == nil {
				ctx = watchServer(ctx, pid)
			}
			err := runGitHook(ctx, g, app, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
			if cause := context.Cause(ctx); err != nil && cause != nil {
				err = fmt.Errorf("%w (%v)", err, cause)
			}
			return err
		},
	}
}

// hookDeadline bounds a hook: a build's default timeout (1h) and the
// rollout it follows (5m), with room to spare.
const hookDeadline = time.Hour + 15*time.Minute

var (
	errHookDeadline = errors.New("the push took longer than berth's hook waits")
	errServerGone   = errors.New("berth's server, which ran this hook, is gone")
)

// watchServer ends ctx when the server process that runs the hook is
// gone. The server kills the hook's process group when the push's request
// ends, but a server killed with -9 kills nothing: its hook would poll
// for a push nobody waits on.
func watchServer(ctx context.Context, pid int) context.Context {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
				cancel(errServerGone)
				return
			}
		}
	}()
	return ctx
}

// refUpdate is a line of the hook's input: <old> <new> <ref>.
type refUpdate struct{ old, new, ref string }

func runGitHook(ctx context.Context, g *globals, app string, in io.Reader, out, errOut io.Writer) error {
	updates, err := readUpdates(in)
	if err != nil {
		return err
	}
	var branch *refUpdate
	for i, u := range updates {
		switch {
		case u.new == zeroCommit:
			continue // a deletion builds nothing
		case !strings.HasPrefix(u.ref, "refs/heads/"):
			return fmt.Errorf("%s is not a branch: berth builds the branches pushed to it (git push berth main)", u.ref)
		case branch != nil:
			return fmt.Errorf("this push updates %s and %s: push one branch at a time, each is built and deployed", branch.ref, u.ref)
		}
		branch = &updates[i]
	}
	if branch == nil {
		return nil
	}
	deploy := !pushOption(noDeployOpt)
	gitDir, err := os.Getwd()
	if err != nil {
		return err
	}
	name := strings.TrimPrefix(branch.ref, "refs/heads/")
	src := build.Source{Dir: gitDir, Root: gitDir, Commit: branch.new}
	tarball, err := writeContext(fmt.Sprintf("commit %s of branch %s", branch.new[:12], name), errOut, func(w io.Writer) (build.Info, error) {
		return src.WriteCommit(ctx, w, 0)
	})
	if err != nil {
		return err
	}
	defer tarball.Close()
	cl, err := g.client()
	if err != nil {
		return err
	}
	req := client.BuildRequest{App: app, Commit: branch.new, Deploy: deploy}
	f := buildFlags{deploy: deploy, rollout: 5 * time.Minute}
	if err := submitBuild(ctx, cl, req, tarball, f, out, errOut); err != nil {
		return fmt.Errorf("%w; the push is rejected", err)
	}
	if !deploy {
		fmt.Fprintf(out, "not deployed (-o %s); deploy it with: berth deploy, image %s:%s\n", noDeployOpt, app, branch.new)
	}
	return nil
}

// readUpdates reads the hook's input, checking each line.
func readUpdates(in io.Reader) ([]refUpdate, error) {
	var updates []refUpdate
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || len(f[0]) != len(zeroCommit) || len(f[1]) != len(zeroCommit) {
			return nil, fmt.Errorf("unexpected hook input %q (want <old> <new> <ref>; SHA-1 repositories only)", sc.Text())
		}
		updates = append(updates, refUpdate{f[0], f[1], f[2]})
	}
	return updates, sc.Err()
}

// pushOption reports whether the pusher gave `git push -o opt`.
func pushOption(opt string) bool {
	n, _ := strconv.Atoi(os.Getenv("GIT_PUSH_OPTION_COUNT"))
	for i := range n {
		if os.Getenv(fmt.Sprintf("GIT_PUSH_OPTION_%d", i)) == opt {
			return true
		}
	}
	return false
}
