package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pmezard/go-difflib/difflib"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"berth/api"
	"berth/internal/client"
)

// historyCmds are `berth history`, `berth diff` and `berth rollback`.
func historyCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{historyCmd(g), diffCmd(g), rollbackCmd(g)}
}

func historyCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "history APP [REV]",
		Short: "List an app's revisions and their outcomes, or show one with its diff",
		Long: `Without REV: every kept revision of APP, newest first: REV, TIME, IMAGE
(its digest when berth's registry resolved it), CHANGE (a one-line summary),
BY (the description of the token that made it) and OUTCOME (rolling out,
rolled out, failed, reverted, rolled back, superseded; "bad" marks one a
revert judged bad). The newest history_limit (default 20) are kept.

With REV: that revision's whole spec, then its diff against the revision
before it.`,
		Example: "  berth history hello\n  berth history hello 7",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			if len(args) == 2 {
				n, err := revisionArg(args[1])
				if err != nil {
					return err
				}
				return showRevision(ctx, cl, out, args[0], n, asJSON)
			}
			list, err := cl.ListRevisions(ctx, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(out, list.Items)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REV\tTIME\tIMAGE\tCHANGE\tBY\tOUTCOME")
			for _, r := range list.Items {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Revision, r.Created.Local().Format("2006-01-02 15:04:05"),
					revisionImage(r), r.Change, dash(r.By), revisionOutcome(r))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the revisions as JSON")
	return cmd
}

func diffCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "diff APP REV1 REV2",
		Short:   "Show what changed in an app's spec from one revision to another",
		Example: "  berth diff hello 5 7",
		Args:    cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := revisionArg(args[1])
			if err != nil {
				return err
			}
			b, err := revisionArg(args[2])
			if err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ra, err := cl.GetRevision(ctx, args[0], a)
			if err != nil {
				return err
			}
			rb, err := cl.GetRevision(ctx, args[0], b)
			if err != nil {
				return err
			}
			d, err := specDiff(ra, rb)
			if err != nil {
				return err
			}
			if d == "" {
				fmt.Fprintf(cmd.OutOrStdout(), "revisions %d and %d have the same spec and image\n", a, b)
				return nil
			}
			_, err = io.WriteString(cmd.OutOrStdout(), d)
			return err
		},
	}
}

func rollbackCmd(g *globals) *cobra.Command {
	var detach bool
	var timeout, deadline time.Duration
	cmd := &cobra.Command{
		Use:   "rollback APP [REV]",
		Short: "Go back to an earlier revision (default: the last that rolled out), and follow the rollout",
		Long: `Give APP a new revision copied from REV: its spec and its image digest, so
the same bytes run again, and history only grows. Without REV, the newest
revision before the current one that rolled out and is not marked bad.
The rollout is followed as by 'berth deploy'.`,
		Example: "  berth rollback hello\n  berth rollback hello 5",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var rev int64
			if len(args) == 2 {
				n, err := revisionArg(args[1])
				if err != nil {
					return err
				}
				rev = n
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			since, err := latestRevision(ctx, cl)
			if err != nil {
				return err
			}
			app, err := cl.Rollback(ctx, args[0], rev)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "%s: revision %d accepted (%s, %s)\n", app.Spec.Name, app.Revision, app.Spec.Image, api.Count(app.Spec.ReplicaCount(), "replica"))
			if detach {
				return nil
			}
			return follow(ctx, cl, out, app.Spec.Name, since, false, timeout, deadline)
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the rollback is accepted")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up following after this long")
	progressDeadlineFlag(cmd, &deadline)
	return cmd
}

// showRevision prints a revision's summary and spec, then its diff
// against the one before it when that is kept.
func showRevision(ctx context.Context, cl *client.Client, out io.Writer, app string, n int64, asJSON bool) error {
	r, err := cl.GetRevision(ctx, app, n)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(out, r)
	}
	fmt.Fprintf(out, "revision %d of %s, %s, by %s\n", r.Revision, r.App, r.Created.Local().Format("2006-01-02 15:04:05"), dash(r.By))
	fmt.Fprintf(out, "change:  %s\noutcome: %s\n", r.Change, revisionOutcome(r))
	if r.Reason != "" {
		fmt.Fprintf(out, "reason:  %s\n", r.Reason)
	}
	if r.ImageDigest != "" {
		fmt.Fprintf(out, "image:   %s@%s\n", r.Spec.Image, r.ImageDigest)
	}
	spec, err := yaml.Marshal(r.Spec)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\n%s", spec)
	if n == 1 {
		return nil
	}
	prev, err := cl.GetRevision(ctx, app, n-1)
	if client.IsStatus(err, 404) {
		fmt.Fprintf(out, "\n(revision %d is no longer kept: no diff)\n", n-1)
		return nil
	}
	if err != nil {
		return err
	}
	d, err := specDiff(prev, r)
	if err != nil || d == "" {
		return err
	}
	fmt.Fprintf(out, "\n%s", d)
	return nil
}

// specDiff is a unified diff of two revisions' specs as YAML, with the
// image digest as a comment line so that a push of the same tag shows.
func specDiff(a, b api.Revision) (string, error) {
	text := func(r api.Revision) ([]string, error) {
		y, err := yaml.Marshal(r.Spec)
		if err != nil {
			return nil, err
		}
		s := string(y)
		if r.ImageDigest != "" {
			s = "# image digest " + r.ImageDigest + "\n" + s
		}
		return difflib.SplitLines(s), nil
	}
	la, err := text(a)
	if err != nil {
		return "", err
	}
	lb, err := text(b)
	if err != nil {
		return "", err
	}
	return difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: la, B: lb, FromFile: fmt.Sprintf("revision %d", a.Revision), ToFile: fmt.Sprintf("revision %d", b.Revision), Context: 3,
	})
}

func revisionArg(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("REV: %q is not a revision number (see berth history APP)", s)
	}
	return n, nil
}

// revisionImage is the IMAGE column: the image, with 12 digits of its
// digest when berth's registry resolved it.
func revisionImage(r api.Revision) string {
	if r.ImageDigest == "" {
		return r.Spec.Image
	}
	return r.Spec.Image + " (" + digestColumn(r.ImageDigest) + ")"
}

func revisionOutcome(r api.Revision) string {
	if r.Bad {
		return r.Outcome + ", bad"
	}
	return r.Outcome
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
