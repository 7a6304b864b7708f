package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/client"
)

// Exit codes of `berth run --wait` for tasks that did not exit by
// themselves, as in timeout(1) and a shell's Ctrl-C.
const (
	exitTimedOut  = 124
	exitCancelled = 130
)

func runCmd(g *globals) *cobra.Command {
	var tf taskFlags
	var wait bool
	cmd := &cobra.Command{
		Use:   "run [flags] IMAGE [-- COMMAND ARGS...]",
		Short: "Queue a task: a container that runs once to completion",
		Long: `Queue a task and print its id. berth runs it in a fresh container when its
queue and a node have room, keeps its output and exit code after the container
is removed, and retries it (--retries) when it fails. Failures of the
platform (lost node, agent restarted mid-run) are retried on their own.

The task gets BERTH_TASK_ID and BERTH_ATTEMPT in its environment and, with
--payload, the payload at /task/payload (path in BERTH_PAYLOAD).

With --wait, berth prints the id to stderr, streams the output of each attempt
to stdout and exits with the task's exit code: 124 when it timed out, 130 when
it was cancelled, 1 when it failed without an exit code (e.g. a missing
image). Interrupting 'berth run --wait' does not cancel the task.`,
		Example: `  berth run berth/busybox:1 -- sh -c 'echo hi; exit 3'
  berth run --wait --timeout 30s --retries 2 --queue media --cpu 500m --memory 128Mi \
      --env K=V --payload @job.json berth/busybox:1 -- sh /work.sh
  ID=$(berth run --idempotency-key import-2026-11-28 berth/busybox:1 -- true)`,
		Args: needArgs("IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			lead, command, err := splitCommand(cmd, args, 1)
			if err != nil {
				return err
			}
			spec, err := tf.spec(cmd, lead[0], command, cmd.InOrStdin())
			if err != nil {
				return err
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			t, err := cl.SubmitTask(ctx, spec)
			if err != nil {
				return err
			}
			if !wait {
				fmt.Fprintln(cmd.OutOrStdout(), t.ID)
				return nil
			}
			errOut := cmd.ErrOrStderr()
			fmt.Fprintf(errOut, "task %s queued (queue %s)\n", t.ID, t.Spec.Queue)
			t, err = followTask(ctx, cl, t.ID, 1, cmd.OutOrStdout(), errOut)
			if err != nil {
				return fmt.Errorf("task %s: %w; it goes on: see 'berth task show %s'", t.ID, err, t.ID)
			}
			fmt.Fprintln(errOut, summary(t))
			if code := taskExitCode(t); code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
	tf.register(cmd, true)
	cmd.Flags().BoolVarP(&wait, "wait", "w", false, "stream the output and exit with the task's exit code")
	cmd.SetFlagErrorFunc(commandFlagHint)
	return cmd
}

// taskExitCode is what `berth run --wait` exits with for an ended task.
func taskExitCode(t api.Task) int {
	switch t.State {
	case api.TaskSucceeded:
		return 0
	case api.TaskTimedOut:
		return exitTimedOut
	case api.TaskCancelled:
		return exitCancelled
	}
	if a := t.Current(); a != nil && a.ExitCode != nil && *a.ExitCode != 0 {
		return *a.ExitCode
	}
	return 1
}

// summary is the last line of `berth run --wait`:
// "task 0123... failed after 2 attempts: exited with code 3".
func summary(t api.Task) string {
	state := map[string]string{api.TaskTimedOut: "timed out"}[t.State]
	if state == "" {
		state = t.State
	}
	n := len(t.Attempts)
	attempts := api.Count(n, "attempt")
	switch {
	case t.State == api.TaskSucceeded:
		return fmt.Sprintf("task %s succeeded after %s in %s", t.ID, attempts, taskDuration(t))
	case n == 0:
		return fmt.Sprintf("task %s %s before it ran: %s", t.ID, state, t.Error)
	case t.Error == "":
		return fmt.Sprintf("task %s %s after %s", t.ID, state, attempts)
	}
	return fmt.Sprintf("task %s %s after %s: %s", t.ID, state, attempts, t.Error)
}

// followTask writes the output of each attempt from attempt `from` on, as
// it comes, until the task ends, and returns the ended task. A line on
// errOut separates the attempts.
func followTask(ctx context.Context, cl *client.Client, id string, from int, out, errOut io.Writer) (api.Task, error) {
	p := poller{cl: cl, id: id, errOut: errOut}
	for n := from; ; n++ {
		t, err := p.until(ctx, func(t api.Task) bool { return len(t.Attempts) >= n || api.TaskTerminal(t.State) })
		if err != nil || len(t.Attempts) < n {
			return t, err // ended before attempt n began (e.g. cancelled while queued)
		}
		if n > from {
			prev := t.Attempts[n-2]
			fmt.Fprintf(errOut, "--- attempt %d (attempt %d %s) ---\n", n, prev.N, outcome(prev))
		}
		if err := streamAttemptLog(ctx, cl, id, n, out, errOut); err != nil {
			return t, err
		}
		t, err = p.until(ctx, func(t api.Task) bool {
			return api.TaskTerminal(t.State) || len(t.Attempts) > n || !t.Attempts[n-1].Ended.IsZero()
		})
		if err != nil {
			return t, err
		}
		if api.TaskTerminal(t.State) && len(t.Attempts) <= n {
			return t, nil
		}
	}
}

// poller reads a task until a condition holds, riding out a server that
// is briefly away (a restart).
type poller struct {
	cl     *client.Client
	id     string
	errOut io.Writer
	warned bool
}

func (p *poller) until(ctx context.Context, done func(api.Task) bool) (api.Task, error) {
	// Soon first: after an attempt's final log, its end report is a few
	// milliseconds behind.
	wait := 20 * time.Millisecond
	for {
		t, err := p.cl.GetTask(ctx, p.id)
		switch {
		case err == nil && done(t):
			return t, nil
		case err != nil && ctx.Err() != nil:
			return t, ctx.Err()
		case err != nil && isClientError(err):
			return t, err
		case err != nil && !p.warned:
			fmt.Fprintf(p.errOut, "berth: %v; trying again\n", err)
			p.warned = true
		}
		if err == nil {
			p.warned = false
		}
		select {
		case <-ctx.Done():
			return t, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, time.Second)
	}
}

// streamAttemptLog copies an attempt's log to out until the attempt has
// ended and its log is complete. A broken stream (the server restarted)
// is opened again, and what was already written is skipped.
func streamAttemptLog(ctx context.Context, cl *client.Client, id string, attempt int, out, errOut io.Writer) error {
	w := &resumeWriter{w: out}
	failures := 0
	for {
		w.pos = 0
		rc, err := cl.TaskLogs(ctx, id, attempt, true)
		if err == nil {
			_, err = io.Copy(w, rc)
			rc.Close()
			if err == nil {
				return nil
			}
			if errors.Is(err, errOutput) {
				return err
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if isClientError(err) && !client.IsStatus(err, 404) || client.IsStatus(err, 503) {
			return err // refused, or this server keeps no task logs
		}
		// 404: the attempt may have no log yet; otherwise the server is away.
		if failures++; failures == 1 {
			fmt.Fprintf(errOut, "berth: logs of attempt %d: %v; trying again\n", attempt, err)
		}
		if failures > 120 {
			return fmt.Errorf("logs of attempt %d: %w", attempt, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(time.Duration(failures)*250*time.Millisecond, 2*time.Second)):
		}
	}
}

var errOutput = errors.New("write output")

// resumeWriter writes a stream that may be restarted from its beginning:
// the bytes it already wrote (done) are skipped on the next pass.
type resumeWriter struct {
	w         io.Writer
	done, pos int64 // bytes written to w; position in the current pass
}

func (r *resumeWriter) Write(p []byte) (int, error) {
	n := len(p)
	if skip := r.done - r.pos; skip > 0 {
		if skip >= int64(n) {
			r.pos += int64(n)
			return n, nil
		}
		p = p[skip:]
		r.pos += skip
	}
	k, err := r.w.Write(p)
	r.pos += int64(k)
	r.done = r.pos
	if err != nil {
		return n - len(p) + k, fmt.Errorf("%w: %v", errOutput, err)
	}
	return n, nil
}

// isClientError: the server refused the request (4xx); asking again will
// not help.
func isClientError(err error) bool {
	var e *client.Error
	return errors.As(err, &e) && e.Status >= 400 && e.Status < 500
}
