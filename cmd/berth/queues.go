package main

import (
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"berth/api"
)

func queueCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "queue",
		Short: "Set a task queue's concurrency limit, list queues",
		Long: `Queues exist as soon as a task names one ('berth run --queue NAME'); a
queue record only sets a limit on how many of its tasks run at once.`,
	}
	cmd.AddCommand(queueSetCmd(g), queueLsCmd(g))
	return cmd
}

func queueSetCmd(g *globals) *cobra.Command {
	var concurrency int
	cmd := &cobra.Command{
		Use:     "set NAME --concurrency N",
		Short:   "Set how many of a queue's tasks may run at once (0: no limit)",
		Example: "  berth queue set media --concurrency 4\n  berth queue set media --concurrency 0   # no limit",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("concurrency") {
				return fmt.Errorf("--concurrency: required (0: no limit)")
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			q, err := cl.PutQueue(cmd.Context(), api.Queue{Name: args[0], Concurrency: concurrency})
			if err != nil {
				return err
			}
			if q.Concurrency == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: no limit\n", q.Name)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: at most %d running at once\n", q.Name, q.Concurrency)
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&concurrency, "concurrency", "c", 0, "at most this many tasks of the queue run at once (0: no limit)")
	return cmd
}

func queueLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List queues that have a limit or active tasks: concurrency, queued, running",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			list, err := cl.ListQueues(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCONCURRENCY\tQUEUED\tRUNNING")
			for _, q := range list.Items {
				limit := "-"
				if q.Concurrency > 0 {
					limit = strconv.Itoa(q.Concurrency)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", q.Name, limit, q.Queued, q.Running)
			}
			return tw.Flush()
		},
	}
}
