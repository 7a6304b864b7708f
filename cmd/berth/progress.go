package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"berth/api"
	"berth/internal/client"
)

// rollout is the state of an app's instances against its spec.
type rollout struct {
	want, current, healthy, old, stopping int
	failed                                string // why the rollout cannot finish, if it cannot
}

func (r rollout) String() string {
	return fmt.Sprintf("%d/%d healthy at the new revision, %d old, %d stopping", r.healthy, r.want, r.old, r.stopping)
}

func (r rollout) done() bool {
	return r.current == r.want && r.healthy == r.want && r.old == 0 && r.stopping == 0
}

// assess compares an app with its instances.
func assess(app api.App, insts []api.Instance) rollout {
	r := rollout{want: app.Spec.ReplicaCount()}
	for _, inst := range insts {
		switch {
		case inst.Desired == api.DesiredStop:
			r.stopping++
		case inst.Revision != app.TemplateRevision:
			r.old++
		default:
			r.current++
			if inst.Ready() {
				r.healthy++
			}
			if r.failed != "" {
				continue
			}
			switch {
			case inst.Status.State == api.StateFailed:
				r.failed = fmt.Sprintf("%s failed: %s", inst.Name, inst.Status.Error)
			case inst.Status.Restarts >= 3 && !inst.Status.Healthy:
				r.failed = fmt.Sprintf("%s keeps exiting (%d restarts, last exit code %s): %s", inst.Name, inst.Status.Restarts, exitCodeString(inst.Status.ExitCode), inst.Status.Error)
			case inst.Node == "" && inst.Reason != "":
				r.failed = fmt.Sprintf("%s cannot be placed: %s", inst.Name, inst.Reason)
			}
		}
	}
	return r
}

// follow prints the app's events until its instances match the spec
// (or it is gone, when gone is set), or the rollout fails or times out.
func follow(ctx context.Context, cl *client.Client, out io.Writer, name string, since int64, gone bool, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	events, _ := cl.WatchEvents(ctx, name, since)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	lastLine := ""
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				events = nil // the watch ended; keep polling
				continue
			}
			if ev.Type == "put" {
				printEvent(out, ev.Object, start)
			}
			for len(events) > 0 { // print the burst before looking at state
				if ev := <-events; ev.Type == "put" {
					printEvent(out, ev.Object, start)
				}
			}
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%s did not converge within %s (%s); it goes on in the background: see 'berth ps %s'", name, timeout, lastLine, name)
		}
		insts, err := cl.ListInstances(ctx, client.InstanceFilter{App: name})
		if err != nil {
			continue
		}
		if gone {
			if len(insts.Items) == 0 {
				if _, err := cl.GetApp(ctx, name); client.IsStatus(err, 404) {
					fmt.Fprintf(out, "%s removed in %s\n", name, time.Since(start).Round(10*time.Millisecond))
					return nil
				}
			}
			lastLine = fmt.Sprintf("%d instances left", len(insts.Items))
			continue
		}
		app, err := cl.GetApp(ctx, name)
		if err != nil {
			return err
		}
		if app.Idled {
			// Scaled to zero before the rollout was seen to finish: the
			// next request through the gateway wakes it.
			fmt.Fprintf(out, "%s: idle (scaled to zero, woken by its next request) after %s\n", name, time.Since(start).Round(10*time.Millisecond))
			return nil
		}
		r := assess(app, insts.Items)
		lastLine = r.String()
		if r.done() {
			fmt.Fprintf(out, "%s: %d/%d healthy at revision %d in %s\n", name, r.healthy, r.want, app.Revision, time.Since(start).Round(10*time.Millisecond))
			return nil
		}
		if r.failed != "" {
			return fmt.Errorf("rollout of %s failed: %s", name, r.failed)
		}
	}
}

func printEvent(out io.Writer, e api.Event, start time.Time) {
	who := e.Instance
	if who == "" {
		who = e.App
	}
	fmt.Fprintf(out, "%7s  %-14s %-12s %s\n", "+"+time.Since(start).Round(100*time.Millisecond).String(), who, e.Kind, e.Message)
}

func exitCodeString(c *int) string {
	if c == nil {
		return "-"
	}
	return fmt.Sprint(*c)
}
