package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/client"
)

// berth rollout: status of an app's rollout, and the canary's steering.

func rolloutCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Show and steer an app's rollout: status, promote, abort, pause, resume",
		Long: `A deploy that changes what an instance runs rolls out as a rolling update,
or, with 'berth deploy --canary 10%' (or update.canary in the spec), as a
canary: a few instances of the new revision beside the stable ones, given a
share of the gateway's traffic. Each client stays on the side it was given
(a cookie the gateway sets). After update.canary.duration (default 5m) the
canary is promoted when its requests stayed within max_error_rate (5xx and
connect failures, default 1%) and max_p99_ratio (its p99 over the stable
one's, default 1.5), and aborted and marked bad when not; too many errors
abort it at once. A request with the header X-Berth-Revision: N, or to the
host rev-N.<route>, reaches revision N only.`,
		Example: "  berth rollout status hello -f\n  berth rollout promote hello\n  berth rollout abort hello",
	}
	cmd.AddCommand(rolloutStatusCmd(g))
	for _, a := range []struct{ verb, short string }{
		{"promote", "Promote the canary: a rolling update of the new revision to all replicas"},
		{"abort", "Abort the canary: its instances go, all traffic goes back to the stable revision"},
		{"pause", "Hold the rollout where it is (a canary's clock, a rolling update's progress)"},
		{"resume", "Go on with a paused rollout"},
	} {
		cmd.AddCommand(rolloutActionCmd(g, a.verb, a.short))
	}
	return cmd
}

func rolloutActionCmd(g *globals, verb, short string) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " APP",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			app, err := cl.RolloutAction(cmd.Context(), args[0], verb)
			if err != nil {
				return fmt.Errorf("rollout %s %s: %w", verb, args[0], err)
			}
			out := cmd.OutOrStdout()
			switch verb {
			case "promote":
				fmt.Fprintf(out, "%s: canary of revision %d promoted: rolling update to %s\n", args[0], app.Revision, api.Count(app.Spec.ReplicaCount(), "replica"))
			case "abort":
				fmt.Fprintf(out, "%s: canary aborted: revision %d runs revision %d's spec (%s) again\n", args[0], app.Revision, app.TemplateRevision, app.Spec.Image)
			case "pause":
				fmt.Fprintf(out, "%s: rollout of revision %d paused (berth rollout resume %s)\n", args[0], app.Revision, args[0])
			case "resume":
				fmt.Fprintf(out, "%s: rollout of revision %d resumed\n", args[0], app.Revision)
			}
			return nil
		},
	}
}

func rolloutStatusCmd(g *globals) *cobra.Command {
	var watch, asJSON bool
	cmd := &cobra.Command{
		Use:   "status APP",
		Short: "Phase, weights, healthy/total, error rate and p99 per revision, and what comes next",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			for {
				st, err := cl.RolloutStatus(ctx, args[0])
				if err != nil {
					return err
				}
				if asJSON {
					if err := writeJSON(out, st); err != nil {
						return err
					}
				} else {
					printRollout(out, st)
				}
				if !watch || (st.Phase != api.PhaseCanary && st.Phase != api.PhaseRolling && st.Phase != api.PhasePaused) {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(2 * time.Second):
				}
				fmt.Fprintln(out)
			}
		},
	}
	cmd.Flags().BoolVarP(&watch, "follow", "f", false, "print it again every 2s until the rollout ends")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print it as JSON")
	return cmd
}

func printRollout(out io.Writer, st api.RolloutStatus) {
	line := fmt.Sprintf("%s: revision %d, %s", st.App, st.Revision, st.Phase)
	if st.Outcome != "" && st.Phase != st.Outcome {
		line += " (" + st.Outcome + ")"
	}
	fmt.Fprintln(out, line)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REV\tROLE\tIMAGE\tWEIGHT\tHEALTHY\tREQUESTS\tERRORS\tP50\tP99")
	for _, r := range st.Revisions {
		weight, reqs, errs, p50, p99 := "-", "-", "-", "-", "-"
		if r.Weight != nil {
			weight = r.Weight.String()
		}
		if t := r.Traffic; t != nil {
			reqs = fmt.Sprint(t.Requests)
			errs = fmt.Sprintf("%.2f%%", 100*t.ErrorRate)
			if t.Requests > 0 {
				p50, p99 = seconds(t.P50), seconds(t.P99)
			}
		} else if st.Canary != nil && r.Weight != nil {
			reqs, errs = "0", "0.00%"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", r.Revision, r.Role, dash(r.Image), weight, r.Healthy, r.Total, reqs, errs, p50, p99)
	}
	tw.Flush()
	if c := st.Canary; c != nil {
		fmt.Fprintf(out, "judged since %s: at most %s failed, p99 at most %g times the stable one's (0: not judged)\n",
			st.Since.Local().Format("15:04:05"), *c.MaxErrorRate, *c.MaxP99Ratio)
	}
	switch {
	case !st.Deadline.IsZero():
		fmt.Fprintf(out, "next: in %s (%s): %s\n", time.Until(st.Deadline).Round(time.Second), st.Deadline.Local().Format("15:04:05"), st.Next)
	case st.Next != "":
		fmt.Fprintf(out, "next: %s\n", st.Next)
	}
}

func seconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// canaryLine says what a deploy that started a canary did.
func canaryLine(app api.App) string {
	c := app.Canary
	when := "promoted by hand: berth rollout promote " + app.Spec.Name
	if !c.PromoteAt.IsZero() {
		when = fmt.Sprintf("promoted at %s if its traffic is healthy", c.PromoteAt.Local().Format("15:04:05"))
	}
	return fmt.Sprintf("%s: canary: %s of revision %d with %s of the traffic, beside the stable revision %d; %s",
		app.Spec.Name, api.Count(c.Instances, "instance"), app.Revision, c.Weight, c.Stable, when)
}

// followCanary waits until the canaries are healthy (exit 0) or the
// canary ends otherwise: aborted (non-zero), promoted or superseded.
func followCanary(ctx context.Context, cl *client.Client, out io.Writer, app api.App, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	name, rev := app.Spec.Name, app.Revision
	last := ""
	for {
		cur, err := cl.GetApp(ctx, name)
		if err != nil {
			return fmt.Errorf("follow the canary of %s: %w", name, err)
		}
		if cur.Canary == nil || cur.Canary.Revision != rev {
			r, err := cl.GetRevision(ctx, name, rev)
			if err == nil && (r.Outcome == api.OutcomeReverted || r.Outcome == api.OutcomeAborted) {
				return fmt.Errorf("%s: the canary of revision %d was aborted: %s", name, rev, r.Reason)
			}
			fmt.Fprintf(out, "%s: the canary of revision %d ended (now revision %d)\n", name, rev, cur.Revision)
			return nil
		}
		st, err := cl.RolloutStatus(ctx, name)
		if err != nil {
			return fmt.Errorf("follow the canary of %s: %w", name, err)
		}
		for _, r := range st.Revisions {
			if r.Role != "canary" {
				continue
			}
			if msg := fmt.Sprintf("%s: canary %d/%d healthy", name, r.Healthy, cur.Canary.Instances); msg != last {
				fmt.Fprintln(out, msg)
				last = msg
			}
			if r.Healthy >= cur.Canary.Instances {
				fmt.Fprintf(out, "%s: canary serving; see berth rollout status %s\n", name, name)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: the canary is not healthy after %s; it goes on: berth rollout status %s", name, timeout, name)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
