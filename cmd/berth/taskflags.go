package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"berth/api"
)

// taskFlags are the flags that describe a task, shared by `berth run` and
// `berth schedule create`. Unset flags leave the server's defaults.
type taskFlags struct {
	timeout, stopGrace time.Duration
	retries, priority  int
	queue, cpu, memory string
	env                []string
	payload            string
	idempotencyKey     string
}

func (f *taskFlags) register(cmd *cobra.Command, withKey bool) {
	fs := cmd.Flags()
	fs.DurationVar(&f.timeout, "timeout", api.DefaultTaskTimeout, "per attempt: SIGTERM, then SIGKILL after --stop-grace; state timed_out (0s: none)")
	fs.DurationVar(&f.stopGrace, "stop-grace", api.DefaultStopGrace, "time between SIGTERM and SIGKILL on timeout or cancel")
	fs.IntVar(&f.retries, "retries", 0, "further attempts after the task's own failure (non-zero exit, timeout)")
	fs.StringVar(&f.queue, "queue", api.DefaultQueue, "queue (a DNS label); see 'berth queue set' for its concurrency limit")
	fs.IntVar(&f.priority, "priority", api.DefaultPriority, "0, 1 or 2: within a queue higher runs first, then oldest")
	fs.StringVar(&f.cpu, "cpu", api.DefaultTaskCPU.String(), `CPU while running: "500m", "0.5" or "2" (cores)`)
	fs.StringVar(&f.memory, "memory", api.DefaultTaskMemory.String(), `memory limit: "128Mi", "1Gi"`)
	fs.StringArrayVarP(&f.env, "env", "e", nil, "environment variable K=V (repeatable)")
	fs.StringVar(&f.payload, "payload", "", "data mounted read-only at /task/payload (path in $BERTH_PAYLOAD): @FILE, @- for stdin, or a literal string; at most 1 MiB")
	if withKey {
		fs.StringVar(&f.idempotencyKey, "idempotency-key", "", "a second submission with the same key returns the first task")
	}
}

// spec builds the task spec from the flags, IMAGE and its command. Only
// flags the user set are sent; the server fills in the rest.
func (f *taskFlags) spec(cmd *cobra.Command, image string, command []string, stdin io.Reader) (api.TaskSpec, error) {
	s := api.TaskSpec{Image: image, Command: command, IdempotencyKey: f.idempotencyKey}
	fs := cmd.Flags()
	if fs.Changed("queue") {
		s.Queue = f.queue
	}
	if fs.Changed("priority") {
		s.Priority = &f.priority
	}
	s.Retries = f.retries
	if fs.Changed("timeout") {
		d := api.Duration(f.timeout)
		s.Timeout = &d
	}
	if fs.Changed("stop-grace") {
		d := api.Duration(f.stopGrace)
		s.StopGrace = &d
	}
	if fs.Changed("cpu") {
		cpu, err := api.ParseMilliCPU(f.cpu)
		if err != nil {
			return s, fmt.Errorf("--cpu: %w", err)
		}
		s.Resources.CPU = cpu
	}
	if fs.Changed("memory") {
		mem, err := api.ParseBytes(f.memory)
		if err != nil {
			return s, fmt.Errorf("--memory: %w", err)
		}
		s.Resources.Memory = mem
	}
	for _, kv := range f.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return s, fmt.Errorf("--env: %q is not K=V", kv)
		}
		if s.Env == nil {
			s.Env = map[string]string{}
		}
		s.Env[k] = v
	}
	payload, err := readPayload(f.payload, stdin)
	if err != nil {
		return s, err
	}
	s.Payload = payload
	return s, nil
}

// readPayload reads --payload: @FILE, @- (stdin) or the literal text. Too
// large a payload is refused here, before anything is sent.
func readPayload(arg string, stdin io.Reader) ([]byte, error) {
	name, isFile := strings.CutPrefix(arg, "@")
	if !isFile {
		if len(arg) > api.MaxPayload {
			return nil, fmt.Errorf("--payload: %d bytes is more than the limit of 1 MiB (%d bytes)", len(arg), api.MaxPayload)
		}
		return []byte(arg), nil
	}
	var r io.Reader = stdin
	if name != "-" {
		file, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("--payload: %w", err)
		}
		defer file.Close()
		r = file
	} else {
		name = "stdin"
	}
	data, err := io.ReadAll(io.LimitReader(r, api.MaxPayload+1))
	if err != nil {
		return nil, fmt.Errorf("--payload: %s: %w", name, err)
	}
	if len(data) > api.MaxPayload {
		size := "more than 1 MiB"
		if st, err := os.Stat(name); err == nil && st.Mode().IsRegular() {
			size = fmt.Sprintf("%d bytes", st.Size())
		}
		return nil, fmt.Errorf("--payload: %s is %s, more than the limit of 1 MiB (%d bytes)", name, size, api.MaxPayload)
	}
	return data, nil
}

// splitCommand splits the arguments of `NAMES... IMAGE [-- COMMAND ARGS...]`
// into the leading positional ones (names, then IMAGE) and the task's
// command. Without a `--`, everything after IMAGE is the command.
func splitCommand(cmd *cobra.Command, args []string, leading int) ([]string, []string, error) {
	dash := cmd.ArgsLenAtDash()
	if dash < 0 {
		dash = min(leading, len(args))
	}
	if dash != leading {
		return nil, nil, fmt.Errorf("%d argument(s) before --, want %d: %q (usage: %s %s)", dash, leading, args[:dash], cmd.Parent().CommandPath(), cmd.Use)
	}
	return args[:dash], args[dash:], nil
}

// needArgs requires the leading arguments (names: "NAME", "IMAGE") and
// says which are missing, with the usage, instead of counting them.
func needArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		given := len(args)
		if dash := cmd.ArgsLenAtDash(); dash >= 0 {
			given = dash
		}
		if given < len(names) {
			return fmt.Errorf("missing %s (usage: %s %s; see --help)", strings.Join(names[given:], " and "), cmd.Parent().CommandPath(), cmd.Use)
		}
		return nil
	}
}

// commandFlagHint explains a flag error that is most likely the task's
// own command line missing its `--`.
func commandFlagHint(cmd *cobra.Command, err error) error {
	return fmt.Errorf("%w (a command with flags goes after --, as in: berth run IMAGE -- sh -c 'echo hi')", err)
}
