package tasklog

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"berth/api"
)

func open(t *testing.T) (*Store, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "task-logs")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

func read(t *testing.T, s *Store, id string, attempt int, offset int64) (string, int64, bool) {
	t.Helper()
	r, size, final, err := s.Reader(id, attempt, offset)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), size, final
}

func TestWriteOffsetsAndFinal(t *testing.T) {
	s, _ := open(t)
	id := api.NewTaskID(time.Now())
	if got, size, final := read(t, s, id, 1, 0); got != "" || size != 0 || final {
		t.Fatalf("log before any write: %q %d %v, want empty and not final", got, size, final)
	}
	must := func(offset int64, data string, final bool) {
		t.Helper()
		if err := s.Write(id, 1, offset, []byte(data), final); err != nil {
			t.Fatalf("write at %d: %v", offset, err)
		}
	}
	must(0, "hello ", false)
	must(6, "world\n", false)
	must(6, "world\n", false) // a retried upload changes nothing
	if got, _, final := read(t, s, id, 1, 0); got != "hello world\n" || final {
		t.Fatalf("log = %q final %v", got, final)
	}
	must(6, "there\n", false) // replaces what was after the offset
	if got, _, _ := read(t, s, id, 1, 0); got != "hello there\n" {
		t.Fatalf("after a rewrite from 6: %q", got)
	}
	if err := s.Write(id, 1, 20, []byte("x"), false); !errors.Is(err, ErrGap) {
		t.Fatalf("write past the end: %v, want ErrGap", err)
	}
	must(12, "bye\n", true)
	got, size, final := read(t, s, id, 1, 0)
	if got != "hello there\nbye\n" || size != 16 || !final {
		t.Fatalf("final log = %q %d %v", got, size, final)
	}
	must(12, "bye\n", false) // a retried final upload, even without the flag, keeps it final
	if got, _, final := read(t, s, id, 1, 6); got != "there\nbye\n" || !final {
		t.Fatalf("read from 6 = %q %v", got, final)
	}
	if got, _, _ := read(t, s, id, 2, 0); got != "" {
		t.Fatalf("attempt 2 shares attempt 1's log: %q", got)
	}
}

func TestCutAtLimit(t *testing.T) {
	s, _ := open(t)
	id := api.NewTaskID(time.Now())
	big := bytes.Repeat([]byte("a"), api.MaxTaskLog-10)
	if err := s.Write(id, 1, 0, big, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(id, 1, int64(len(big)), bytes.Repeat([]byte("b"), 5000), false); err != nil {
		t.Fatal(err)
	}
	// Past the slack: kept up to api.MaxTaskLog, then the notice.
	got, size, _ := read(t, s, id, 1, 0)
	if size > Limit || !strings.HasSuffix(got, strings.Repeat("b", 10)+CutNotice) {
		t.Fatalf("cut log: %d bytes ending %q", size, got[len(got)-60:])
	}
	// More output after the cut is dropped, wherever the agent thinks it is.
	if err := s.Write(id, 1, 2*api.MaxTaskLog, []byte("more"), true); err != nil {
		t.Fatalf("write after the cut: %v", err)
	}
	got2, size2, final := read(t, s, id, 1, 0)
	if got2 != got || size2 != size || !final {
		t.Fatalf("after a write past the cut: %d bytes, final %v; want it unchanged and final", size2, final)
	}
	// An agent's own notice within the slack is kept as sent.
	id2 := api.NewTaskID(time.Now())
	own := append(bytes.Repeat([]byte("c"), api.MaxTaskLog), "\n[cut by the agent]\n"...)
	if err := s.Write(id2, 1, 0, own, true); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := read(t, s, id2, 1, 0); got != string(own) {
		t.Fatalf("agent-cut log changed: ends %q", got[len(got)-30:])
	}
}

func TestChangedWakesOnWrite(t *testing.T) {
	s, _ := open(t)
	id := api.NewTaskID(time.Now())
	ch := s.Changed(id, 1)
	select {
	case <-ch:
		t.Fatal("closed before any write")
	default:
	}
	if err := s.Write(id, 1, 0, []byte("x"), false); err != nil {
		t.Fatal(err)
	}
	<-ch // a missed wake-up would hang the test here
	if other := s.Changed(id, 2); other == ch {
		t.Fatal("attempts share a channel")
	}
}

func TestBadNamesAndRemove(t *testing.T) {
	s, dir := open(t)
	for _, id := range []string{"../../etc/passwd", "", "ABCDEFGHJKMNPQRS", "0123456789abcde/"} {
		if err := s.Write(id, 1, 0, []byte("x"), false); !errors.Is(err, ErrBadName) {
			t.Errorf("write of id %q: %v, want ErrBadName", id, err)
		}
		if _, _, _, err := s.Reader(id, 1, 0); !errors.Is(err, ErrBadName) {
			t.Errorf("read of id %q: %v, want ErrBadName", id, err)
		}
		if err := s.Remove(id); !errors.Is(err, ErrBadName) {
			t.Errorf("remove of id %q: %v, want ErrBadName", id, err)
		}
	}
	id := api.NewTaskID(time.Now())
	for _, n := range []int{0, -1, MaxAttempt + 1} {
		if err := s.Write(id, n, 0, []byte("x"), false); !errors.Is(err, ErrBadName) {
			t.Errorf("attempt %d: %v, want ErrBadName", n, err)
		}
	}
	for n := 1; n <= 3; n++ {
		if err := s.Write(id, n, 0, []byte("out"), n == 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Remove(id); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 3; n++ {
		if got, _, final := read(t, s, id, n, 0); got != "" || final {
			t.Errorf("attempt %d after remove: %q final %v", n, got, final)
		}
	}
	if err := s.Remove(id); err != nil {
		t.Errorf("remove of a task without logs: %v", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("left in the log dir after removing the only task: %v", left)
	}
}
