// Package tasklog keeps the output of task attempts as files under the
// server's data directory, so that it outlives the containers. Agents
// upload an attempt's output in pieces, each from a byte offset; a piece
// replaces whatever the log had from its offset on, so that a retried
// upload is harmless.
package tasklog

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"berth/api"
)

// Limit is the most an attempt's log holds: api.MaxTaskLog of output and
// room for the notice that says it was cut.
const Limit = api.MaxTaskLog + 4096

// CutNotice ends a log that the server cut at api.MaxTaskLog.
const CutNotice = "\n[berth: output cut at 1 MiB]\n"

// MaxAttempt bounds attempt numbers (far above what retries allow).
const MaxAttempt = 100000

var (
	// ErrGap: a write starts past the end of what the log holds.
	ErrGap = errors.New("offset is past the end of the log")
	// ErrBadName: the task id or attempt number is not one.
	ErrBadName = errors.New("not a task id and attempt")
)

// Store keeps logs under one directory: <dir>/<id[:6]>/<id>/<attempt>.log
// while the attempt writes, renamed to <attempt>.done once final. Ids
// start with their creation time, so a shard directory holds the tasks of
// a few minutes.
type Store struct {
	dir   string
	locks [64]sync.Mutex // by task id: writes of one log never interleave

	mu      sync.Mutex
	waiters map[string]chan struct{} // closed at the next write of the log
}

// Open makes the directory if needed.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("task logs: %w", err)
	}
	return &Store{dir: dir, waiters: map[string]chan struct{}{}}, nil
}

func (s *Store) taskDir(id string) string { return filepath.Join(s.dir, id[:6], id) }

func (s *Store) paths(id string, attempt int) (open, done string, err error) {
	if !api.ValidTaskID(id) || attempt < 1 || attempt > MaxAttempt {
		return "", "", fmt.Errorf("%q attempt %d: %w", id, attempt, ErrBadName)
	}
	base := filepath.Join(s.taskDir(id), strconv.Itoa(attempt))
	return base + ".log", base + ".done", nil
}

func (s *Store) lock(id string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(id))
	return &s.locks[h.Sum32()%uint32(len(s.locks))]
}

// Write keeps the log's bytes before offset and replaces the rest with
// data; final marks the log complete (it stays so). An offset past the
// end is an error, except on a log already cut, where more output is
// dropped. Output beyond api.MaxTaskLog is cut and the cut is noted.
func (s *Store) Write(id string, attempt int, offset int64, data []byte, final bool) error {
	open, done, err := s.paths(id, attempt)
	if err != nil {
		return err
	}
	if offset < 0 {
		return fmt.Errorf("offset %d: %w", offset, ErrGap)
	}
	l := s.lock(id)
	l.Lock()
	defer l.Unlock()
	defer s.notify(id, attempt)

	f, isDone, err := openForWrite(open, done)
	if err != nil {
		return fmt.Errorf("task log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("task log: %w", err)
	}
	size := st.Size()
	switch {
	case offset > size && size >= api.MaxTaskLog:
		offset, data = size, nil // cut already: the rest is dropped
	case offset > size:
		return fmt.Errorf("offset %d, log of %s attempt %d has %d bytes: %w", offset, id, attempt, size, ErrGap)
	}
	if room := Limit - offset; int64(len(data)) > room {
		if keep := api.MaxTaskLog - offset; keep >= 0 {
			data = append(data[:keep:keep], CutNotice...)
		} else {
			data = data[:max(room, 0)]
		}
	}
	if err := f.Truncate(offset); err != nil {
		return fmt.Errorf("task log: %w", err)
	}
	if _, err := f.WriteAt(data, offset); err != nil {
		return fmt.Errorf("task log: %w", err)
	}
	if final && !isDone {
		if err := os.Rename(open, done); err != nil {
			return fmt.Errorf("task log: %w", err)
		}
	}
	return nil
}

// openForWrite opens the log, done if it is, making its directory. Remove
// of another task may take away an empty shard directory meanwhile: then
// it tries again.
func openForWrite(open, done string) (f *os.File, isDone bool, err error) {
	for range 3 {
		if f, err = os.OpenFile(done, os.O_RDWR, 0); err == nil {
			return f, true, nil
		}
		if err = os.MkdirAll(filepath.Dir(open), 0o700); err == nil {
			if f, err = os.OpenFile(open, os.O_RDWR|os.O_CREATE, 0o600); err == nil {
				return f, false, nil
			}
		}
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	return nil, false, err
}

// Reader reads an attempt's log from offset to its current end. A log
// that has nothing yet reads as empty and not final.
func (s *Store) Reader(id string, attempt int, offset int64) (r io.ReadCloser, size int64, final bool, err error) {
	open, done, err := s.paths(id, attempt)
	if err != nil {
		return nil, 0, false, err
	}
	// The open name first: a log only ever moves from open to done.
	f, err := os.Open(open)
	if errors.Is(err, fs.ErrNotExist) {
		f, err = os.Open(done)
		final = true
	}
	if errors.Is(err, fs.ErrNotExist) {
		return io.NopCloser(bytes.NewReader(nil)), 0, false, nil
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("task log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, false, fmt.Errorf("task log: %w", err)
	}
	size = st.Size()
	offset = min(max(offset, 0), size)
	return readCloser{io.NewSectionReader(f, offset, size-offset), f}, size, final, nil
}

// Changed returns a channel that is closed at the next write of the log.
// Take it before reading, so that no write falls in between.
func (s *Store) Changed(id string, attempt int) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := waitKey(id, attempt)
	ch, ok := s.waiters[k]
	if !ok {
		ch = make(chan struct{})
		s.waiters[k] = ch
	}
	return ch
}

func (s *Store) notify(id string, attempt int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := waitKey(id, attempt)
	if ch, ok := s.waiters[k]; ok {
		close(ch)
		delete(s.waiters, k)
	}
}

func waitKey(id string, attempt int) string { return id + "/" + strconv.Itoa(attempt) }

// Remove deletes the logs of all of a task's attempts; a task without
// logs is fine.
func (s *Store) Remove(id string) error {
	if !api.ValidTaskID(id) {
		return fmt.Errorf("%q: %w", id, ErrBadName)
	}
	l := s.lock(id)
	l.Lock()
	defer l.Unlock()
	dir := s.taskDir(id)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("task logs of %s: %w", id, err)
	}
	_ = os.Remove(filepath.Dir(dir)) // the shard, once empty; fails while not
	return nil
}

type readCloser struct {
	io.Reader
	io.Closer
}
