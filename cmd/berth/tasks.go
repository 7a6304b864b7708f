package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/client"
)

var taskStates = []string{api.TaskQueued, api.TaskRetrying, api.TaskRunning,
	api.TaskSucceeded, api.TaskFailed, api.TaskTimedOut, api.TaskCancelled}

func tasksCmd(g *globals) *cobra.Command {
	var f client.TaskFilter
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "tasks",
		Short: "List tasks, newest first: queue, state, attempts, exit code, duration, age",
		Long: `List tasks, newest first. --state takes a task state (queued, retrying,
running, succeeded, failed, timed_out, cancelled) or "active" for the first
three.`,
		Example: "  berth tasks\n  berth tasks --queue media --state failed\n  berth tasks --state active --limit 0",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case f.State == "active":
				f.State, f.Active = "", true
			case f.State != "" && !slices.Contains(taskStates, f.State):
				return fmt.Errorf("--state: %q is not one of %s or active", f.State, strings.Join(taskStates, ", "))
			}
			if f.Limit == 0 {
				f.Limit = -1 // the flag's 0 means all
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			list, err := cl.ListTasks(cmd.Context(), f)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(out, list.Items)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tQUEUE\tSTATE\tATTEMPTS\tEXIT\tDURATION\tAGE\tINFO")
			for _, t := range list.Items {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", t.ID, t.Spec.Queue, t.State, len(t.Attempts),
					exitCodeString(t.ExitCode), taskDuration(t), age(t.Created), taskInfo(t))
			}
			return tw.Flush()
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&f.Queue, "queue", "q", "", "only this queue")
	fs.StringVarP(&f.State, "state", "s", "", "only this state, or active")
	fs.StringVar(&f.Schedule, "schedule", "", "only tasks made by this schedule")
	fs.IntVarP(&f.Limit, "limit", "n", 100, "at most this many (0: all)")
	fs.BoolVar(&asJSON, "json", false, "print the tasks as JSON")
	return cmd
}

func taskCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "task",
		Short: "Show a task, print its logs or cancel it",
	}
	cmd.AddCommand(taskShowCmd(g), taskLogsCmd(g), taskCancelCmd(g))
	return cmd
}

func taskShowCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "show ID",
		Short:   "Show a task and every attempt: node, container, start, end, exit code, error",
		Example: "  berth task show 0123456789abcdef",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkTaskID(args[0]); err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			t, err := cl.GetTask(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), t)
			}
			return writeTask(cmd.OutOrStdout(), t)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the task as JSON")
	return cmd
}

func taskLogsCmd(g *globals) *cobra.Command {
	var followLogs bool
	var attempt int
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Print a task's output (kept after its container is removed)",
		Long: `Print the output of a task's latest attempt, or of --attempt N. With -f,
follow it as it comes; without --attempt, -f goes on with the next attempts
until the task ends.`,
		Example: "  berth task logs 0123456789abcdef\n  berth task logs 0123456789abcdef -f\n  berth task logs 0123456789abcdef --attempt 1",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := checkTaskID(id); err != nil {
				return err
			}
			if attempt < 0 {
				return fmt.Errorf("--attempt: %d is not an attempt number (from 1; 0: the latest)", attempt)
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			t, err := cl.GetTask(ctx, id)
			if err != nil {
				return err
			}
			if attempt > len(t.Attempts) {
				return fmt.Errorf("task %s has %d attempt(s), not %d", id, len(t.Attempts), attempt)
			}
			if followLogs && attempt == 0 {
				_, err := followTask(ctx, cl, id, max(1, len(t.Attempts)), out, cmd.ErrOrStderr())
				return err
			}
			if followLogs {
				return streamAttemptLog(ctx, cl, id, attempt, out, cmd.ErrOrStderr())
			}
			if len(t.Attempts) == 0 {
				when := "has not run yet"
				if api.TaskTerminal(t.State) {
					when = "never ran"
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "task %s %s (%s)\n", id, when, t.State)
				return nil
			}
			rc, err := cl.TaskLogs(ctx, id, attempt, false)
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(out, rc)
			return err
		},
	}
	cmd.Flags().BoolVarP(&followLogs, "follow", "f", false, "keep printing as the task runs")
	cmd.Flags().IntVar(&attempt, "attempt", 0, "this attempt (from 1; 0: the latest)")
	return cmd
}

func taskCancelCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a task: at once when queued, by stopping its container when running",
		Long: `Cancel a task. A queued or retrying task ends at once; a running one ends
once its container is stopped (SIGTERM, then SIGKILL after its stop grace).
Its state becomes cancelled. A task that has ended cannot be cancelled.`,
		Example: "  berth task cancel 0123456789abcdef",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := checkTaskID(id); err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			t, err := cl.CancelTask(cmd.Context(), id)
			if client.IsStatus(err, 409) {
				if t, gerr := cl.GetTask(cmd.Context(), id); gerr == nil {
					return fmt.Errorf("task %s has already ended: %s", id, t.State)
				}
			}
			if err != nil {
				return err
			}
			if t.State == api.TaskCancelled {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: cancelled\n", id)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: cancelling (stopping its container on %s)\n", id, orDash(t.Node))
			}
			return nil
		},
	}
}

func checkTaskID(id string) error {
	if !api.ValidTaskID(id) {
		return fmt.Errorf("%q is not a task id (16 characters, as printed by 'berth run' and 'berth tasks')", id)
	}
	return nil
}

// writeTask prints a task and a table of its attempts.
func writeTask(out io.Writer, t api.Task) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	s := t.Spec
	state := t.State
	switch {
	case t.Error != "":
		state += ": " + t.Error
	case t.State == api.TaskRetrying:
		state += fmt.Sprintf(" (next attempt in %s)", time.Until(t.NotBefore).Round(100*time.Millisecond))
	case t.CancelRequested && !api.TaskTerminal(t.State):
		state += " (cancelling)"
	}
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("id", t.ID)
	row("state", state)
	row("queue", fmt.Sprintf("%s (priority %s)", s.Queue, intPtr(s.Priority)))
	row("image", s.Image)
	if len(s.Command) > 0 {
		row("command", shellJoin(s.Command))
	}
	for _, k := range slices.Sorted(maps.Keys(s.Env)) {
		row("env", k+"="+s.Env[k])
	}
	row("resources", fmt.Sprintf("cpu %s, memory %s", s.Resources.CPU, s.Resources.Memory))
	row("timeout", fmt.Sprintf("%s (stop grace %s)", durPtr(s.Timeout), durPtr(s.StopGrace)))
	row("retries", fmt.Sprintf("%d (used %d; attempts lost to the platform: %d)", s.Retries, min(t.UserFailures, s.Retries), t.PlatformFailures))
	if t.PayloadSize > 0 {
		row("payload", api.Bytes(t.PayloadSize).Human()+"B at /task/payload")
	}
	if s.IdempotencyKey != "" {
		row("idempotency key", s.IdempotencyKey)
	}
	if t.Schedule != "" {
		row("schedule", t.Schedule)
	}
	row("exit code", exitCodeString(t.ExitCode))
	row("created", fmt.Sprintf("%s (%s ago)", t.Created.Local().Format(time.DateTime), age(t.Created)))
	if !t.Ended.IsZero() {
		row("ended", fmt.Sprintf("%s (took %s)", t.Ended.Local().Format(time.DateTime), taskDuration(t)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(t.Attempts) == 0 {
		_, err := fmt.Fprintln(out, "\nno attempts yet")
		return err
	}
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ATTEMPT\tSTATE\tNODE\tCONTAINER\tSTARTED\tENDED\tDURATION\tEXIT\tFAULT\tLOG\tERROR")
	for _, a := range t.Attempts {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.N, a.State, orDash(a.Node), orDash(a.Container),
			clock(a.Started), clock(a.Ended), span(a.Started, a.Ended), exitCodeString(a.ExitCode), fault(a),
			logSize(a), orDash(a.Error))
	}
	return tw.Flush()
}

// outcome says how an attempt ended, for the line between attempts.
func outcome(a api.Attempt) string {
	switch {
	case a.Platform || a.State == api.AttemptLost:
		return "lost to the platform: " + orDash(a.Error)
	case a.State == api.TaskTimedOut:
		return "timed out"
	case a.Error != "":
		return a.State + ": " + a.Error
	case a.ExitCode != nil:
		return fmt.Sprintf("%s: exited with code %d", a.State, *a.ExitCode)
	}
	return a.State
}

// fault says whose failure ended an attempt: the task's (it used up a
// retry) or the platform's (retried on its own).
func fault(a api.Attempt) string {
	switch {
	case a.Platform:
		return "platform"
	case a.State == api.TaskFailed || a.State == api.TaskTimedOut:
		return "task"
	}
	return "-"
}

func logSize(a api.Attempt) string {
	if a.Ended.IsZero() && a.LogBytes == 0 {
		return "-"
	}
	s := api.Bytes(a.LogBytes).Human() + "B"
	if a.LogTruncated {
		s += " (cut at 1 MiB)"
	}
	return s
}

// taskInfo is the last column of `berth tasks`: why a task is where it is.
func taskInfo(t api.Task) string {
	switch {
	case t.State == api.TaskRetrying:
		return "next attempt in " + time.Until(t.NotBefore).Round(100*time.Millisecond).String()
	case t.CancelRequested && !api.TaskTerminal(t.State):
		return "cancelling"
	case t.Error != "":
		return t.Error
	case t.Schedule != "":
		return "schedule " + t.Schedule
	}
	return ""
}

// taskDuration is how long a task has been running, from its first
// attempt's start to its end (or now): retries and backoff included.
func taskDuration(t api.Task) string {
	if len(t.Attempts) == 0 {
		return "-"
	}
	first := t.Attempts[0]
	start := first.Started
	if start.IsZero() {
		start = first.Created
	}
	end := t.Ended
	if end.IsZero() {
		end = time.Now()
	}
	return roundDuration(end.Sub(start))
}

func span(start, end time.Time) string {
	if start.IsZero() || end.IsZero() {
		return "-"
	}
	return roundDuration(end.Sub(start))
}

func roundDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "-"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func clock(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05.000")
}

func intPtr(p *int) string {
	if p == nil {
		return "-"
	}
	return strconv.Itoa(*p)
}

func durPtr(p *api.Duration) string {
	switch {
	case p == nil:
		return "-"
	case *p == 0:
		return "none"
	}
	return shortDuration(p.D())
}

// shortDuration drops the zero units Go prints: 1h, not 1h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// shellJoin writes a command the way a shell would read it back.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`;&|<>()*?[]{}#~!") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
