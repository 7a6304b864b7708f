package main

import (
	"io"

	"github.com/spf13/cobra"
)

func logsCmd(g *globals) *cobra.Command {
	var followLogs bool
	var tail int
	cmd := &cobra.Command{
		Use:     "logs APP",
		Short:   "Print the logs of all of an app's instances, each line prefixed by its instance",
		Example: "  berth logs hello -f\n  berth logs hello --tail 20",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			rc, err := cl.AppLogs(cmd.Context(), args[0], followLogs, tail)
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
	cmd.Flags().BoolVarP(&followLogs, "follow", "f", false, "keep printing new lines")
	cmd.Flags().IntVar(&tail, "tail", -1, "only the last N lines of each instance (-1: all)")
	return cmd
}
