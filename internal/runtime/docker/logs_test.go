package docker

import (
	"bufio"
	"strings"
	"testing"
	"time"

	"berth/internal/runtime"
)

// stampedLine is one line of a Logs stream with Timestamps.
type stampedLine struct {
	at   time.Time
	text string
}

func (e *env) stampedLogs(id string, since time.Time) []stampedLine {
	e.t.Helper()
	rc, err := e.r.Logs(e.t.Context(), id, false, -1, runtime.LogOptions{Since: since, Timestamps: true})
	if err != nil {
		e.t.Fatal(err)
	}
	defer rc.Close()
	var out []stampedLine
	sc := bufio.NewScanner(rc)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		stamp, text, _ := strings.Cut(sc.Text(), " ")
		at, err := time.Parse(time.RFC3339Nano, stamp)
		if err != nil {
			e.t.Fatalf("line %q does not start with a timestamp: %v", sc.Text(), err)
		}
		out = append(out, stampedLine{at, text})
	}
	if err := sc.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func texts(lines []stampedLine) []string {
	var out []string
	for _, l := range lines {
		out = append(out, l.text)
	}
	return out
}

// Timestamps give each line one stamp (a line the engine cut in pieces
// too), and Since goes on after a given line: across a restart it gives
// the new run's lines only.
func TestLogsSinceAndTimestamps(t *testing.T) {
	e := newEnv(t)
	long := strings.Repeat("x", 40000) // the engine cuts it in 3 pieces
	id := e.run(e.spec("sh", "-c", "echo a; head -c 40000 /dev/zero | tr '\\0' x; echo; echo b"))
	e.waitExited(id)

	lines := e.stampedLogs(id, time.Time{})
	if got := texts(lines); len(got) != 3 || got[0] != "a" || got[1] != long || got[2] != "b" {
		t.Fatalf("lines %.60q, want a, 40000 x, b", got)
	}
	after := e.stampedLogs(id, lines[0].at.Add(time.Nanosecond))
	if got := texts(after); len(got) != 2 || got[0] != long || got[1] != "b" {
		t.Fatalf("since the first line: %.60q, want the 2 after it", got)
	}

	if err := e.r.Start(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	e.waitExited(id)
	again := e.stampedLogs(id, lines[2].at.Add(time.Nanosecond))
	if got := texts(again); len(got) != 3 || got[0] != "a" || got[2] != "b" {
		t.Fatalf("since the first run's last line: %.60q, want the second run's 3", got)
	}
	if all := e.stampedLogs(id, time.Time{}); len(all) != 6 {
		t.Fatalf("want 6 lines in all after two runs: %.60q", texts(all))
	}
}
