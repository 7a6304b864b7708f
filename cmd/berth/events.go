package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
)

func eventsCmd(g *globals) *cobra.Command {
	var followEvents bool
	var limit int
	cmd := &cobra.Command{
		Use:   "events [APP]",
		Short: "Show what happened: placed, started, healthy, unhealthy, exited, restarted, removed",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			app := ""
			if len(args) == 1 {
				app = args[0]
			}
			ctx := cmd.Context()
			list, err := cl.ListEvents(ctx, app, limit)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, e := range list.Items {
				writeEvent(out, e)
			}
			if !followEvents {
				return nil
			}
			events, errc := cl.WatchEvents(ctx, app, list.Revision)
			for ev := range events {
				if ev.Type == "put" {
					writeEvent(out, ev.Object)
				}
			}
			if ctx.Err() != nil {
				return nil
			}
			return <-errc
		},
	}
	cmd.Flags().BoolVarP(&followEvents, "follow", "f", false, "keep printing new events")
	cmd.Flags().IntVarP(&limit, "limit", "n", 100, "how many past events to show")
	return cmd
}

func writeEvent(out io.Writer, e api.Event) {
	who := e.Instance
	if who == "" {
		who = e.App
	}
	fmt.Fprintf(out, "%s  %-14s %-13s %-10s %s\n", e.Time.Local().Format(time.DateTime), who, e.Kind, orDash(e.Node), e.Message)
}
