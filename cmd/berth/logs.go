package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/client"
)

func logsCmd(g *globals) *cobra.Command {
	var followLogs bool
	var tail int
	cmd := &cobra.Command{
		Use:   "logs APP",
		Short: "Print the logs of all of an app's instances, each line prefixed by its instance",
		Long: `Print the logs of all of an app's instances, each line prefixed by its instance.
With -f, keep printing until Ctrl-C: the new lines of every instance; a
container that restarts, from its new run's first line (no line is printed
twice); the instances that start later (a scale-up, a rolling update, a
container made again), with all of their output. --tail applies to the
instances there when the follow starts.
A task's output is 'berth task logs ID'.`,
		Example: "  berth logs hello -f\n  berth logs hello --tail 20",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			rc, err := cl.AppLogs(cmd.Context(), args[0], followLogs, tail)
			if client.IsStatus(err, 404) {
				return notAnApp(cmd.Context(), cl, args[0], err)
			}
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(cmd.OutOrStdout(), rc)
			if cmd.Context().Err() != nil {
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&followLogs, "follow", "f", false, "keep printing new lines, across restarts and new instances")
	cmd.Flags().IntVar(&tail, "tail", -1, "only the last N lines of each instance (-1: all)")
	return cmd
}

// notAnApp explains a name that names no app, when it is (or has the shape
// of) a task id: a task's output is `berth task logs`.
func notAnApp(ctx context.Context, cl *client.Client, name string, notFound error) error {
	if !api.ValidTaskID(name) {
		return notFound
	}
	if _, err := cl.GetTask(ctx, name); err == nil {
		return fmt.Errorf("%s is a task, not an app: use berth task logs %s", name, name)
	}
	return fmt.Errorf("%w (%s has the shape of a task id, but there is no such task either; a task's output is berth task logs ID)", notFound, name)
}
