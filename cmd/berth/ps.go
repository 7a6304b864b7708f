package main

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/client"
)

var clientFilterAll = client.InstanceFilter{}

func psCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ps [APP]",
		Short: "List instances: state, node, address, age, restarts",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			f := client.InstanceFilter{}
			if len(args) == 1 {
				f.App = args[0]
			}
			list, err := cl.ListInstances(cmd.Context(), f)
			if err != nil {
				return err
			}
			if f.App != "" && len(list.Items) == 0 {
				if err := appExists(cmd.Context(), cl, f.App); err != nil {
					return err
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(list.Items)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "INSTANCE\tSTATE\tNODE\tADDRESS\tREV\tAGE\tRESTARTS\tLAST EXIT\tINFO")
			for _, inst := range list.Items {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n",
					inst.Name, displayState(inst), orDash(inst.Node), orDash(inst.Status.Address),
					inst.Revision, age(inst.Created), inst.Status.Restarts, exitCodeString(inst.Status.ExitCode), info(inst))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the instances as JSON")
	return cmd
}

// appExists answers an error saying there is no such app when the
// server has none of that name: an empty table would say it has no
// instances.
func appExists(ctx context.Context, cl *client.Client, name string) error {
	_, err := cl.GetApp(ctx, name)
	if client.IsStatus(err, 404) {
		return fmt.Errorf("no app named %s ('berth apps' lists them)", name)
	}
	return err
}

func displayState(inst api.Instance) string {
	switch {
	case inst.Desired == api.DesiredStop && inst.Status.State != api.StateStopping:
		return "retiring"
	case inst.Desired == api.DesiredKeep && inst.Status.State == api.StateIdle:
		return "kept" // stopped, its container kept for a fast rollback
	}
	return inst.Status.State
}

func info(inst api.Instance) string {
	switch {
	case inst.Node == "" && inst.Reason != "":
		return inst.Reason
	case inst.Desired == api.DesiredStop:
		return inst.StopReason
	case inst.Desired == api.DesiredKeep:
		left := "expiring"
		if d := time.Until(inst.KeptUntil); d > 0 {
			left = d.Round(time.Second).String() + " left"
		}
		return fmt.Sprintf("stopped, kept for a fast rollback to revision %d until %s (%s)",
			inst.Revision, inst.KeptUntil.Local().Format("15:04:05"), left)
	}
	return inst.Status.Error
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
