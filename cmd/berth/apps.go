package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/client"
)

func deployCmd(g *globals) *cobra.Command {
	var file string
	var detach, force bool
	var canary string
	var timeout, deadline time.Duration
	cmd := &cobra.Command{
		Use:   "deploy -f app.yaml",
		Short: "Create or update an app from its spec, and follow the rollout",
		Long: `Send an app spec (YAML or JSON) to the server. The server validates it and
stores it as a new revision; berth then places, starts and health-checks the
instances, replacing old ones one at a time when the template changed.

A spec that names replicas sets them; one that omits them keeps the app's
current number (say, from 'berth scale'), and 1 for a new app.

deploy prints the rollout's progress until every instance is healthy at the
new revision (exit 0) or the rollout fails (non-zero, with the reason): an
instance that cannot start or be placed, one that keeps exiting, or no new
healthy instance within the app's update.progress_deadline (default 5m).
Then the server reverts the app to its last revision that rolled out, as a
new revision (update.auto_revert, default on), and marks the failed one
bad: deploying that spec again needs --force. 'berth history' shows every
revision and its outcome; 'berth rollback' goes back by hand.

With --canary (or update.canary in the spec) a change of the template
starts as a canary: a few instances of it beside the stable ones, given a
share of the gateway's traffic. deploy then follows until the canaries are
healthy and says when they will be promoted; 'berth rollout' shows and
steers the rest.`,
		Example: "  berth deploy -f examples/hello.yaml\n  berth deploy -f app.yaml --detach\n  berth deploy -f app.yaml --canary 10%",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("-f: the app spec file is required (- for stdin)")
			}
			var data []byte
			var err error
			if file == "-" {
				data, err = io.ReadAll(io.LimitReader(os.Stdin, api.MaxSpecBytes+1))
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return err
			}
			// Parse locally only to learn the name; the server validates.
			spec, err := api.ParseAppSpec(data)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			if spec.Name == "" {
				return fmt.Errorf("%s: name: required", file)
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			since, err := latestRevision(ctx, cl) // progress is what happens from now on
			if err != nil {
				return fmt.Errorf("deploy %s: %w", spec.Name, err)
			}
			before, err := cl.GetApp(ctx, spec.Name)
			if err != nil && !client.IsStatus(err, 404) {
				return fmt.Errorf("deploy %s: %w", spec.Name, err)
			}
			app, err := cl.DeployYAML(ctx, spec.Name, data, client.DeployOptions{Force: force, Canary: canary})
			if err != nil {
				return fmt.Errorf("deploy %s: %w", spec.Name, err)
			}
			if app.Revision == before.Revision {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: unchanged (revision %d)\n", spec.Name, app.Revision)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: revision %d accepted (%s, %s)\n", spec.Name, app.Revision, app.Spec.Image,
					replicasLine(before, app, spec.Replicas != nil))
			}
			if app.Canary != nil {
				fmt.Fprintln(cmd.OutOrStdout(), canaryLine(app))
			}
			if detach {
				return nil
			}
			if app.Canary != nil {
				return followCanary(ctx, cl, cmd.OutOrStdout(), app, timeout)
			}
			return follow(ctx, cl, cmd.OutOrStdout(), spec.Name, since, false, timeout, deadline)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "app spec file (YAML or JSON; - for stdin)")
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the spec is accepted")
	cmd.Flags().BoolVar(&force, "force", false, "roll out a spec whose template a revert marked bad")
	cmd.Flags().StringVar(&canary, "canary", "", "start as a canary: a share of the traffic (10%) or a number of instances (2); see 'berth rollout --help'")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up following after this long")
	progressDeadlineFlag(cmd, &deadline)
	return cmd
}

// progressDeadlineFlag is the hidden --progress-deadline, which overrides
// the fixed one for the tests (a spec field will replace it).
func progressDeadlineFlag(cmd *cobra.Command, d *time.Duration) {
	cmd.Flags().DurationVar(d, "progress-deadline", 0, "fail when the rollout makes no progress for this long (default: 2m, see --help)")
	_ = cmd.Flags().MarkHidden("progress-deadline")
}

// replicasLine says how many replicas a deploy leaves, and why when it
// changes them or keeps a number the spec does not name.
func replicasLine(before, after api.App, named bool) string {
	was, now := before.Spec.ReplicaCount(), after.Spec.ReplicaCount()
	switch {
	case before.Revision == 0:
		return api.Count(now, "replica")
	case !named:
		return api.Count(now, "replica") + ", kept: the spec names none"
	case was != now:
		return fmt.Sprintf("replicas %d -> %d, from the spec", was, now)
	}
	return api.Count(now, "replica")
}

func scaleCmd(g *globals) *cobra.Command {
	var detach bool
	var timeout, deadline time.Duration
	cmd := &cobra.Command{
		Use:   "scale APP REPLICAS",
		Short: "Change the number of an app's instances",
		Long: `Set the number of an app's instances and follow until that many are healthy
(exit 0), or fail as deploy does (see 'berth deploy --help'). The number
holds until a spec that names replicas is deployed.`,
		Example: "  berth scale hello 5",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 0 {
				return fmt.Errorf("REPLICAS: %q is not a number of instances", args[1])
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			since, err := latestRevision(cmd.Context(), cl)
			if err != nil {
				return fmt.Errorf("scale %s: %w", args[0], err)
			}
			app, err := cl.Scale(cmd.Context(), args[0], n)
			if err != nil {
				return fmt.Errorf("scale %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: scaling to %d (revision %d)\n", args[0], n, app.Revision)
			if detach {
				return nil
			}
			return follow(cmd.Context(), cl, cmd.OutOrStdout(), args[0], since, false, timeout, deadline)
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the change is accepted")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "give up following after this long")
	progressDeadlineFlag(cmd, &deadline)
	return cmd
}

func rmCmd(g *globals) *cobra.Command {
	var detach bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "rm APP",
		Short: "Remove an app: stop and remove all of its containers",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			since, err := latestRevision(cmd.Context(), cl)
			if err != nil {
				return fmt.Errorf("rm %s: %w", args[0], err)
			}
			if _, err := cl.DeleteApp(cmd.Context(), args[0]); err != nil {
				return fmt.Errorf("rm %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: removing\n", args[0])
			if detach {
				return nil
			}
			return follow(cmd.Context(), cl, cmd.OutOrStdout(), args[0], since, true, timeout, 0)
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once removal has begun")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "give up waiting after this long")
	return cmd
}

func appsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "apps",
		Short: "List apps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			apps, err := cl.ListApps(cmd.Context())
			if err != nil {
				return err
			}
			insts, err := cl.ListInstances(cmd.Context(), clientFilterAll)
			if err != nil {
				return err
			}
			healthy := map[string]int{}
			for _, inst := range insts.Items {
				if inst.Ready() {
					healthy[inst.App]++
				}
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tIMAGE\tREADY\tREVISION\tPORT\tUPDATED")
			for _, a := range apps.Items {
				ready := fmt.Sprintf("%d/%d", healthy[a.Spec.Name], a.Spec.ReplicaCount())
				switch {
				case a.Deleting:
					ready = "removing"
				case a.Idled:
					ready += " idle" // scaled to zero; the next request wakes it
				}
				port := "-"
				if a.Spec.Port > 0 {
					port = strconv.Itoa(a.Spec.Port)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", a.Spec.Name, a.Spec.Image, ready, a.Revision, port, age(a.Updated))
			}
			return tw.Flush()
		},
	}
}

// latestRevision is the store's current revision, to follow from now on.
func latestRevision(ctx context.Context, cl *client.Client) (int64, error) {
	l, err := cl.ListEvents(ctx, "", 1)
	return l.Revision, err
}

// age prints how long ago t was, the way ps does.
func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
