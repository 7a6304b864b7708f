package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/client"
)

func scheduleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Run a task on a cron schedule: create, ls, rm",
	}
	cmd.AddCommand(scheduleCreateCmd(g), scheduleLsCmd(g), scheduleRmCmd(g))
	return cmd
}

func scheduleCreateCmd(g *globals) *cobra.Command {
	var tf taskFlags
	var cronExpr, overlap string
	cmd := &cobra.Command{
		Use:   "create NAME --cron EXPR [flags] IMAGE [-- COMMAND ARGS...]",
		Short: "Create (or replace) a schedule that queues a task each time its cron fires",
		Long: `Create a schedule, or replace the one of that name (it keeps its last run).
Each time --cron fires, berth queues a task with the given image, command and
task flags (the same as 'berth run').

--cron takes five fields (minute hour day-of-month month day-of-week, in UTC)
or a descriptor: @hourly, @daily, @weekly, @monthly,
@every 5s (at least 1s). --overlap skip (default) queues no run while the
last one is still queued or running; allow lets runs overlap. A run missed
while berth was down runs once when it starts again.`,
		Example: `  berth schedule create nightly --cron '0 3 * * *' berth/busybox:1 -- sh -c 'echo report'
  berth schedule create tick --cron '@every 30s' --timeout 20s --queue cron berth/busybox:1 -- date`,
		Args: needArgs("NAME", "IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			lead, command, err := splitCommand(cmd, args, 2)
			if err != nil {
				return err
			}
			if cronExpr == "" {
				return fmt.Errorf("--cron: required, e.g. '0 3 * * *' or '@every 5m'")
			}
			spec, err := tf.spec(cmd, lead[1], command, cmd.InOrStdin())
			if err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			_, err = cl.GetSchedule(ctx, lead[0])
			existed := err == nil
			if err != nil && !client.IsStatus(err, 404) {
				return err
			}
			s, err := cl.PutSchedule(ctx, api.Schedule{Name: lead[0], Cron: cronExpr, Overlap: overlap, Task: spec})
			if err != nil {
				return err
			}
			verb := "created"
			if existed {
				verb = "replaced"
			}
			next := ""
			if sched, err := api.CronParser.Parse(s.Cron); err == nil {
				from := s.LastRun // the server counts from the last run (a new schedule's is now)
				if from.IsZero() {
					from = time.Now()
				}
				next = fmt.Sprintf("; next run at %s UTC", sched.Next(from.UTC()).Format(time.DateTime))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s (%s, overlap %s)%s\n", s.Name, verb, s.Cron, s.Overlap, next)
			return nil
		},
	}
	tf.register(cmd, false)
	cmd.Flags().StringVar(&cronExpr, "cron", "", "when to run: five cron fields (UTC), or @hourly, @daily, @every 5m, ...")
	cmd.Flags().StringVar(&overlap, "overlap", api.OverlapSkip, "skip: no new run while the last one is active; allow: runs may overlap")
	cmd.SetFlagErrorFunc(commandFlagHint)
	return cmd
}

func scheduleLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List schedules: cron, overlap policy, last run, last task, image",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			list, err := cl.ListSchedules(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCRON\tOVERLAP\tLAST RUN\tLAST TASK\tIMAGE")
			for _, s := range list.Items {
				last := lastRun(s)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Cron, s.Overlap, last, orDash(s.LastTask), s.Task.Image)
			}
			return tw.Flush()
		},
	}
}

// lastRun is the LAST RUN column: "never" until the schedule first
// queues a task (a new schedule counts from its creation, which is no run).
func lastRun(s api.Schedule) string {
	if s.LastTask == "" || s.LastRun.IsZero() {
		return "never"
	}
	return age(s.LastRun) + " ago"
}

func scheduleRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME",
		Short:   "Remove a schedule (the tasks it queued are kept)",
		Example: "  berth schedule rm nightly",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			if err := cl.DeleteSchedule(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: removed\n", args[0])
			return nil
		},
	}
}
