package e2e

// What readme_test.go needs: the README's marked blocks as command lines,
// berth up started the way `make up` starts it, and one shell that runs
// the lines in turn, as a user types them into one terminal.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ---- the README's blocks ----

// readmeLine is one command of a README block and the comment after it.
// A command continued with a trailing backslash is joined into one line;
// comment lines under a command continue its comment.
type readmeLine struct {
	cmd, comment string
}

// readmeBlock returns the commands of the sh block that follows the
// marker `<!-- readme-test: name` in readme.
func readmeBlock(readme, name string) ([]readmeLine, error) {
	marker := "<!-- readme-test: " + name
	lines := strings.Split(readme, "\n")
	start := -1
	for i, l := range lines {
		if rest, ok := strings.CutPrefix(l, marker); ok && (rest == "" || rest[0] == ' ') {
			start = i
			break
		}
	}
	if start < 0 || start+1 >= len(lines) || lines[start+1] != "```sh" {
		return nil, fmt.Errorf("README.md: no line %q followed by a ```sh block", marker+" -->")
	}
	var out []readmeLine
	pending := "" // a command continued on the next line
	for _, l := range lines[start+2:] {
		if l == "```" {
			if pending != "" {
				return nil, fmt.Errorf("README.md, block %s: the last command ends with a backslash", name)
			}
			return out, nil
		}
		code, comment := splitComment(l)
		code = strings.TrimSpace(code)
		switch {
		case code == "" && comment != "" && len(out) > 0 && pending == "":
			last := &out[len(out)-1]
			last.comment = strings.TrimSpace(last.comment + " " + comment)
		case code == "":
		case strings.HasSuffix(code, `\`):
			pending += strings.TrimSpace(strings.TrimSuffix(code, `\`)) + " "
		default:
			out = append(out, readmeLine{cmd: pending + code, comment: comment})
			pending = ""
		}
	}
	return nil, fmt.Errorf("README.md, block %s: no closing ```", name)
}

// splitComment splits a shell line at its comment: a # at the start or
// after a blank, outside quotes.
func splitComment(line string) (code, comment string) {
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else if c == '\\' && quote == '"' {
				i++
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return line[:i], strings.TrimSpace(line[i+1:])
		}
	}
	return line, ""
}

// ---- berth up as make up runs it ----

// startBerthAsMakeUp starts `berth up` in dir with the default data dir
// (./.berth), as scripts/up.sh does, on free ports: dir's ./bin/berth when
// it has one (the README's walkthrough), else the binary under test. The harness's
// cleanup applies: berth is stopped and the cluster's containers removed.
func startBerthAsMakeUp(t *testing.T, dir string) *berth {
	t.Helper()
	needDocker(t)
	b := &berth{dataDir: filepath.Join(dir, ".berth"), logPath: filepath.Join(t.TempDir(), "berth.log")}
	t.Cleanup(func() { // registered first, so it runs after the stop below
		if b.cluster != "" {
			removeClusterContainers(t, b.cluster)
			removeTaskContainers(t, b.cluster)
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- tail of berth's log (%s) ----\n%s", b.logPath, tailFile(b.logPath, 80))
		}
		b.stop(t)
	})
	for attempt := 1; ; attempt++ {
		b.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
		b.gwAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
		err := b.startIn(t, dir)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "address already in use") || attempt == 5 {
			t.Fatal(err)
		}
		t.Logf("%v; trying other ports", err)
	}
	tok, err := os.ReadFile(filepath.Join(b.dataDir, "token"))
	if err != nil {
		t.Fatalf("berth up in %s: read ./.berth/token: %v", dir, err)
	}
	b.token = strings.TrimSpace(string(tok))
	var st struct {
		Cluster string `json:"cluster"`
	}
	b.getJSON(t, "/v1/status", &st)
	b.cluster = st.Cluster
	waitFor(t, 30*time.Second, func() (bool, string) {
		var nodes list[node]
		if err := b.getJSONErr("/v1/nodes", &nodes); err != nil {
			return false, err.Error()
		}
		for _, n := range nodes.Items {
			if n.State == "ready" {
				b.node = n.Name
				return true, ""
			}
		}
		return false, fmt.Sprintf("no ready node yet: %+v", nodes.Items)
	})
	t.Logf("berth up in %s: addr %s, gateway %s, cluster %s, node %s", dir, b.addr, b.gwAddr, b.cluster, b.node)
	return b
}

// startIn starts bin/berth up in dir and waits until its API answers.
func (b *berth) startIn(t *testing.T, dir string) error {
	t.Helper()
	logf, err := os.OpenFile(b.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	bin := berthBin
	if _, err := os.Stat(filepath.Join(dir, "bin", "berth")); err == nil {
		bin = "./bin/berth"
	}
	cmd := exec.Command(bin, "up", "--listen", b.addr, "--gateway-addr", b.gwAddr)
	cmd.Dir, cmd.Env = dir, cleanEnv()
	return b.run(t, cmd, logf)
}

// ---- one shell for all the lines ----

// shell is one bash reading the lines from its stdin, so that what a line
// sets (export PATH, id=$(...)) holds for the next ones.
type shell struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	outDir string // each line's stdout, stderr and exit code
	errLog string // the shell's own stderr
	n      int
	exited chan struct{}
}

// lineResult is how one line ran.
type lineResult struct {
	line           string
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r lineResult) String() string {
	return fmt.Sprintf("$ %s\n(exit %d after %s)\n-- stdout:\n%s-- stderr:\n%s", r.line, r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

func startShell(t *testing.T, dir string, env []string) *shell {
	t.Helper()
	s := &shell{outDir: t.TempDir(), exited: make(chan struct{})}
	s.errLog = filepath.Join(s.outDir, "shell.stderr")
	errf, err := os.Create(s.errLog)
	if err != nil {
		t.Fatal(err)
	}
	defer errf.Close()
	s.cmd = exec.Command("bash", "--norc", "--noprofile", "-s")
	s.cmd.Dir, s.cmd.Env = dir, env
	s.cmd.Stdout, s.cmd.Stderr = errf, errf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its children end with it
	if s.in, err = s.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start bash: %v", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.in.Close()
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
	})
	return s
}

// run runs one line and waits for its end, at most timeout.
func (s *shell) run(t *testing.T, line string, timeout time.Duration) lineResult {
	t.Helper()
	s.n++
	base := filepath.Join(s.outDir, strconv.Itoa(s.n))
	// The brace group runs in the shell itself (not a subshell), so its
	// assignments stay; the exit code file appears only once complete.
	script := fmt.Sprintf("{ %s\n} >%q 2>%q </dev/null; echo $? >%q && mv %q %q\n",
		line, base+".out", base+".err", base+".tmp", base+".tmp", base+".rc")
	start := time.Now()
	if _, err := io.WriteString(s.in, script); err != nil {
		t.Fatalf("write to bash: %v; its stderr:\n%s", err, tailFile(s.errLog, 20))
	}
	deadline := time.After(timeout)
	for {
		rc, err := os.ReadFile(base + ".rc")
		if err == nil {
			code, err := strconv.Atoi(strings.TrimSpace(string(rc)))
			if err != nil {
				t.Fatalf("exit code of %q: %v", line, err)
			}
			out, _ := os.ReadFile(base + ".out")
			errOut, _ := os.ReadFile(base + ".err")
			r := lineResult{line: line, stdout: string(out), stderr: string(errOut), code: code, took: time.Since(start)}
			t.Logf("%s", r)
			return r
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		select {
		case <-s.exited:
			t.Fatalf("bash exited while running %q; its stderr:\n%s", line, tailFile(s.errLog, 20))
		case <-deadline:
			t.Fatalf("%q did not end within %s", line, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// value prints a shell variable's value.
func (s *shell) value(t *testing.T, name string) string {
	t.Helper()
	return strings.TrimSpace(s.run(t, `printf '%s\n' "$`+name+`"`, 10*time.Second).stdout)
}

// ---- reading the CLI's tables ----

// parseTable splits a CLI table whose first line starts with header into
// its column names and rows (each split on blanks, the last column taking
// the rest of the line).
func parseTable(out, header string) ([]string, [][]string, error) {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], header) {
		return nil, nil, fmt.Errorf("no table with a header starting %q in:\n%s", header, out)
	}
	cols := columnNames(lines[0])
	var rows [][]string
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) > len(cols) {
			f = append(f[:len(cols)-1], strings.Join(f[len(cols)-1:], " "))
		}
		rows = append(rows, f)
	}
	return cols, rows, nil
}

// columnNames splits a header line on runs of two or more blanks, so that
// "LAST EXIT" stays one name.
func columnNames(header string) []string {
	var cols []string
	for _, f := range strings.Split(header, "  ") {
		if f = strings.TrimSpace(f); f != "" {
			cols = append(cols, f)
		}
	}
	return cols
}

// column returns the index of name in cols, or -1.
func column(cols []string, name string) int {
	for i, c := range cols {
		if c == name {
			return i
		}
	}
	return -1
}

// rowOf returns the row whose first field is key.
func rowOf(rows [][]string, key string) ([]string, bool) {
	for _, r := range rows {
		if len(r) > 0 && r[0] == key {
			return r, true
		}
	}
	return nil, false
}

// copyFile copies src to dst.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
