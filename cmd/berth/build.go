package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/build"
	"berth/internal/client"
)

// buildCmds are `berth build` (with `berth build logs`) and `berth builds`.
func buildCmds(g *globals) []*cobra.Command { return []*cobra.Command{buildCmd(g), buildsCmd(g)} }

type buildFlags struct {
	dirty, deploy, detach bool
	memory, cpu, tag      string
	timeout, rollout      time.Duration
	deadline              time.Duration
}

func buildCmd(g *globals) *cobra.Command {
	var f buildFlags
	cmd := &cobra.Command{
		Use:   "build APP [DIR]",
		Short: "Build an image from a directory or a git commit into berth's registry",
		Long: `Build DIR (default: the current directory), which needs a Dockerfile, on a
node with Docker, and push the image into berth's registry as APP:<tag>, so
that an app spec's "image: APP:<tag>" runs it on every node.

In a git work tree the build is of the commit: HEAD's tree at DIR (git
archive: untracked and ignored files are not in it), tagged with the full
commit id. A tree with uncommitted changes under DIR is refused unless
--dirty, which builds the files as they are and tags <commit>-dirty.
Outside git the directory's files are built, tagged ctx-<the first 12 hex
digits of the SHA-256 of the context>: the same files get the same tag.
.dockerignore is honoured in every case.

The image holds the revision (the commit, or the tag) in /app/REVISION and
in the label org.opencontainers.image.revision, whatever the Dockerfile
says. The build log streams as it comes; the last line gives the digest.
With --deploy the app (which must exist) is deployed with the new image,
the rest of its spec unchanged, and the rollout is followed as by 'berth
deploy'. A build that fails stores no image and deploys nothing, and exits
non-zero. Interrupting 'berth build' does not stop the build.

Builds run one at a time per cluster (queue builds: 'berth queue set builds
--concurrency N'), each step with --memory and --cpu at most, on nodes
labelled builder=true when any node has that label.`,
		Example: `  berth build hello                  # in a git work tree: hello:<commit>
  berth build hello ./web --deploy   # build ./web and roll it out
  berth build hello --dirty          # uncommitted changes too: hello:<commit>-dirty
  berth build logs 0123456789abcdef -f`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := "."
			if len(args) == 2 {
				dir = args[1]
			}
			return runBuild(cmd, g, f, args[0], dir)
		},
	}
	fs := cmd.Flags()
	fs.BoolVar(&f.dirty, "dirty", false, "build a git work tree's uncommitted changes too (tag <commit>-dirty)")
	fs.BoolVar(&f.deploy, "deploy", false, "deploy the app with the image once pushed, and follow the rollout")
	fs.BoolVarP(&f.detach, "detach", "d", false, "print the build's id once queued; do not follow it")
	fs.StringVar(&f.memory, "memory", "", "memory cap of each build step (default 2Gi)")
	fs.StringVar(&f.cpu, "cpu", "", "CPUs of each build step (default 1)")
	fs.StringVar(&f.tag, "tag", "", "tag the image so instead of with the commit or content hash")
	fs.DurationVar(&f.timeout, "timeout", 0, "stop the build after this long (default 1h)")
	fs.DurationVar(&f.rollout, "rollout-timeout", 5*time.Minute, "with --deploy: give up following the rollout after this long")
	progressDeadlineFlag(cmd, &f.deadline)
	cmd.AddCommand(buildLogsCmd(g))
	return cmd
}

// runBuild makes the context, sends it, follows the build and, with
// --deploy, the rollout.
func runBuild(cmd *cobra.Command, g *globals, f buildFlags, app, dir string) error {
	if err := api.ValidAppName("APP", app); err != nil {
		return err
	}
	req := client.BuildRequest{App: app, Deploy: f.deploy, Tag: f.tag, Timeout: f.timeout}
	var err error
	if f.memory != "" {
		if req.Memory, err = api.ParseBytes(f.memory); err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
	}
	if f.cpu != "" {
		if req.CPU, err = api.ParseMilliCPU(f.cpu); err != nil {
			return fmt.Errorf("--cpu: %w", err)
		}
	}
	ctx, errOut := cmd.Context(), cmd.ErrOrStderr()
	tarball, err := makeContext(ctx, dir, f.dirty, &req, errOut)
	if err != nil {
		return err
	}
	defer tarball.Close()
	cl, err := g.client()
	if err != nil {
		return err
	}
	return submitBuild(ctx, cl, req, tarball, f, cmd.OutOrStdout(), errOut)
}

// submitBuild sends the context and, unless --detach, follows the build
// and, with --deploy, the rollout.
func submitBuild(ctx context.Context, cl *client.Client, req client.BuildRequest, tarball *os.File, f buildFlags, out, errOut io.Writer) error {
	st, err := tarball.Stat()
	if err != nil {
		return err
	}
	since, err := latestRevision(ctx, cl)
	if err != nil {
		return err
	}
	b, err := cl.SubmitBuild(ctx, req, tarball, st.Size())
	if err != nil {
		return err
	}
	if f.detach {
		fmt.Fprintln(out, b.ID)
		return nil
	}
	fmt.Fprintf(errOut, "build %s queued: %s\n", b.ID, b.Image)
	return followBuild(ctx, cl, b, f, since, out, errOut)
}

// makeContext writes the build context to a temporary file (so that its
// size is known before it is sent) and fills in what the request says
// about its source.
func makeContext(ctx context.Context, dir string, dirty bool, req *client.BuildRequest, errOut io.Writer) (*os.File, error) {
	src, err := build.Inspect(ctx, dir)
	if err != nil {
		return nil, err
	}
	what := dir
	if src.Git() {
		req.Commit = src.Commit
		switch {
		case len(src.Changes) > 0 && !dirty:
			return nil, uncommitted(dir, src.Changes)
		case len(src.Changes) > 0:
			req.Dirty = true
			what = fmt.Sprintf("commit %s with the uncommitted changes in %s", src.Commit[:12], dir)
		default:
			what = fmt.Sprintf("commit %s of %s", src.Commit[:12], dir)
		}
	}
	return writeContext(what, errOut, func(w io.Writer) (build.Info, error) {
		if src.Git() && !req.Dirty {
			return src.WriteClean(ctx, w, 0) // the tree is clean: as git archive, from the disk
		}
		return build.WriteDir(w, src.Dir, 0)
	})
}

// writeContext writes a context of what to a temporary file, rewound.
// The file is unlinked at once: it is gone with its last close, also when
// the process is killed.
func writeContext(what string, errOut io.Writer, write func(io.Writer) (build.Info, error)) (*os.File, error) {
	f, err := os.CreateTemp("", "berth-build-*.tar")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	info, err := write(f)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		if errors.Is(err, build.ErrNoDockerfile) {
			return nil, fmt.Errorf("%s has no Dockerfile (berth build needs one at the top of DIR)", what)
		}
		return nil, fmt.Errorf("build context of %s: %w", what, err)
	}
	fmt.Fprintf(errOut, "context: %s, %s (%s)\n", what, build.Size(info.Size), api.Count(info.Files, "file"))
	return f, nil
}

// uncommitted refuses a dirty tree, naming a few of its changes.
func uncommitted(dir string, changes []string) error {
	shown := changes[:min(len(changes), 5)]
	more := ""
	if len(changes) > len(shown) {
		more = fmt.Sprintf(", and %d more", len(changes)-len(shown))
	}
	return fmt.Errorf("%s has changes that are not committed (git status: %s%s): commit them, or build the files as they are with --dirty (tag <commit>-dirty)",
		dir, strings.Join(trimmed(shown), "; "), more)
}

func trimmed(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = strings.TrimSpace(l)
	}
	return out
}

// followBuild streams the build's log until it ends, then says how it
// ended; with --deploy it follows the rollout.
func followBuild(ctx context.Context, cl *client.Client, b api.Build, f buildFlags, since int64, out, errOut io.Writer) error {
	t, err := followTask(ctx, cl, b.ID, 1, out, errOut)
	if err != nil {
		return fmt.Errorf("build %s: %w; it goes on: see 'berth build logs %s -f'", b.ID, err, b.ID)
	}
	if b, err = cl.GetBuild(ctx, b.ID); err != nil {
		return err
	}
	if t.State != api.TaskSucceeded {
		return fmt.Errorf("build %s of %s %s after %s: %s; nothing was deployed", b.ID, b.Image,
			strings.ReplaceAll(t.State, "_", " "), api.Count(len(t.Attempts), "attempt"), t.Error)
	}
	fmt.Fprintf(out, "built %s digest %s in %s\n", b.Image, b.Digest, taskDuration(t))
	if !f.deploy {
		return nil
	}
	if b.DeployError != "" {
		return fmt.Errorf("build %s: the image is in berth's registry, but deploying app %s failed: %s", b.ID, b.App, b.DeployError)
	}
	return follow(ctx, cl, out, b.App, since, false, f.rollout, f.deadline)
}

func buildLogsCmd(g *globals) *cobra.Command {
	var followLogs bool
	return &cobra.Command{
		Use:     "logs ID",
		Short:   "Print a build's log (kept like a task's output)",
		Example: "  berth build logs 0123456789abcdef\n  berth build logs 0123456789abcdef -f",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := checkTaskID(id); err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			b, err := cl.GetBuild(ctx, id)
			if err != nil {
				return err
			}
			if followLogs {
				_, err := followTask(ctx, cl, id, max(1, b.Attempts), out, cmd.ErrOrStderr())
				return err
			}
			if b.Attempts == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "build %s has not started yet (%s)\n", id, b.State)
				return nil
			}
			rc, err := cl.BuildLogs(ctx, id, false)
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(out, rc)
			return err
		},
	}
}

func buildsCmd(g *globals) *cobra.Command {
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "builds [APP]",
		Short:   "List builds, newest first: commit, state, digest, duration, age",
		Example: "  berth builds\n  berth builds hello",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app := ""
			if len(args) == 1 {
				app = args[0]
			}
			if limit == 0 {
				limit = -1
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			list, err := cl.ListBuilds(cmd.Context(), app, limit)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), list.Items)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tAPP\tCOMMIT\tSTATE\tDIGEST\tDURATION\tAGE")
			for _, b := range list.Items {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.ID, b.App, buildCommit(b), b.State,
					digestColumn(b.Digest), buildDuration(b), age(b.Created))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().IntVarP(&limit, "limit", "n", 100, "at most this many (0: all)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the builds as JSON")
	return cmd
}

// buildCommit is the COMMIT column: 12 digits, -dirty for a dirty tree,
// "-" outside git.
func buildCommit(b api.Build) string {
	switch {
	case b.Commit == "":
		return "-"
	case b.Dirty:
		return b.Commit[:12] + "-dirty"
	}
	return b.Commit[:12]
}

// digestColumn is the DIGEST column: sha256: and 12 hex digits, "-" for none.
func digestColumn(d string) string {
	if d == "" {
		return "-"
	}
	if hex, ok := strings.CutPrefix(d, "sha256:"); ok && len(hex) > 12 {
		return "sha256:" + hex[:12]
	}
	return d
}

// buildDuration is how long the latest attempt built (so far).
func buildDuration(b api.Build) string {
	if b.Started.IsZero() {
		return "-"
	}
	end := b.Ended
	if end.IsZero() {
		end = time.Now()
	}
	return roundDuration(end.Sub(b.Started))
}
