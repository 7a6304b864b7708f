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
			// A removed app's events are still shown; a name that has
			// neither events nor an app is a mistake.
			if app != "" && len(list.Items) == 0 {
				if err := appExists(ctx, cl, app); err != nil {
					return err
				}
			}
			out := cmd.OutOrStdout()
			ew := newEventWriter(out, list.Items)
			for _, e := range list.Items {
				ew.write(e)
			}
			if !followEvents {
				return nil
			}
			events, errc := cl.WatchEvents(ctx, app, list.Revision)
			for ev := range events {
				if ev.Type == "put" {
					ew.write(ev.Object)
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

// eventWriter prints events in columns: time, instance (or app), kind,
// node, message. The columns fit the widest of the events listed first
// and of every kind; a followed event wider than that widens them.
type eventWriter struct {
	out              io.Writer
	who, kind, nodeW int
}

// eventKinds are the kinds events have (api.Event.Kind), for the width
// of their column.
var eventKinds = []string{"placed", "started", "healthy", "unhealthy", "exited", "restarted", "failed",
	"stopping", "removed", "unschedulable", "deployed", "scaled", "deleted", "idled", "woken", "node"}

func newEventWriter(out io.Writer, first []api.Event) *eventWriter {
	w := &eventWriter{out: out, who: 8, nodeW: 4}
	for _, k := range eventKinds {
		w.kind = max(w.kind, len(k))
	}
	for _, e := range first {
		w.fit(e)
	}
	return w
}

func (w *eventWriter) fit(e api.Event) {
	w.who = max(w.who, len(eventWho(e)))
	w.kind = max(w.kind, len(e.Kind))
	w.nodeW = max(w.nodeW, len(orDash(e.Node)))
}

func (w *eventWriter) write(e api.Event) {
	w.fit(e)
	fmt.Fprintf(w.out, "%s  %-*s  %-*s  %-*s  %s\n", e.Time.Local().Format(time.DateTime),
		w.who, eventWho(e), w.kind, e.Kind, w.nodeW, orDash(e.Node), e.Message)
}

func eventWho(e api.Event) string {
	if e.Instance != "" {
		return e.Instance
	}
	return e.App
}
