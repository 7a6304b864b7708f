package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"berth/api"
	"berth/internal/client"
)

const (
	// cutNote ends a log cut at api.MaxTaskLog bytes of output.
	cutNote = "[berth: output cut at 1 MiB]\n"
	// liveLogEvery is how often a running attempt's new output is
	// uploaded. An attempt shorter than that never opens a log stream:
	// its output is uploaded once, at its end.
	liveLogEvery = time.Second
	// finalLogTries bounds the uploads of an attempt's final log: the end
	// is reported even when the log cannot be saved.
	finalLogTries = 8
	// logUploads bounds the uploads in flight, and so the connections
	// they take, when many attempts end at once.
	logUploads = 64
)

// putLog uploads a piece of an attempt's log, waiting for a turn.
func (r *taskRunner) putLog(ctx context.Context, id string, n int, offset int64, data []byte, final bool) error {
	select {
	case r.uploads <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-r.uploads }()
	return r.api.PutTaskLog(ctx, id, n, offset, data, final)
}

// liveLog uploads a running attempt's output as it comes.
type liveLog struct {
	stopc chan struct{}
	done  chan struct{}
	sent  int64 // bytes the server has, valid once done is closed
}

// stop ends the uploads (letting one in flight finish, so that it never
// lands after the final one) and returns how much was uploaded.
func (l *liveLog) stop() int64 {
	close(l.stopc)
	<-l.done
	return l.sent
}

func (r *taskRunner) followLog(ctx context.Context, id string, n int, containerID string) *liveLog {
	l := &liveLog{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		r.uploadLive(ctx, l, id, n, containerID)
	}()
	return l
}

func (r *taskRunner) uploadLive(ctx context.Context, l *liveLog, id string, n int, containerID string) {
	tick := time.NewTicker(liveLogEvery)
	defer tick.Stop()
	select {
	case <-ctx.Done():
		return
	case <-l.stopc:
		return
	case <-tick.C:
	}
	rctx, stopReading := context.WithCancel(ctx)
	buf := &logBuffer{}
	reading := make(chan struct{})
	go func() {
		defer close(reading)
		r.readLive(rctx, containerID, buf)
	}()
	defer func() { stopReading(); <-reading }()
	for {
		if chunk := buf.from(l.sent); len(chunk) > 0 {
			if err := r.putLog(ctx, id, n, l.sent, chunk, false); err != nil {
				if ctx.Err() == nil {
					r.log.Debug("upload task log", "task", id, "attempt", n, "err", err)
				}
			} else {
				l.sent += int64(len(chunk))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-l.stopc:
			return
		case <-tick.C:
		}
	}
}

// readLive follows the container's output into buf until it holds
// api.MaxTaskLog bytes or ctx ends. A stream that ends early is opened
// again, skipping what was read.
func (r *taskRunner) readLive(ctx context.Context, containerID string, buf *logBuffer) {
	for ctx.Err() == nil && !buf.full() {
		rc, err := r.rt.Logs(ctx, containerID, true, -1)
		if err == nil {
			if _, err = io.CopyN(io.Discard, rc, buf.len()); err == nil {
				buf.fill(rc)
			}
			rc.Close()
		}
		sleep(ctx, liveLogEvery)
	}
}

// logBuffer is the kept output of a running attempt, filled by one reader.
type logBuffer struct {
	mu   sync.Mutex
	data []byte
}

func (b *logBuffer) len() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return int64(len(b.data))
}

func (b *logBuffer) full() bool { return b.len() >= api.MaxTaskLog }

// from returns the bytes from offset on; they are never changed later.
func (b *logBuffer) from(offset int64) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.data[min(offset, int64(len(b.data))):]
}

// fill reads from rd until it ends or the buffer is full.
func (b *logBuffer) fill(rd io.Reader) {
	chunk := make([]byte, 32<<10)
	for {
		n, err := rd.Read(chunk)
		b.mu.Lock()
		n = min(n, api.MaxTaskLog-len(b.data))
		b.data = append(b.data, chunk[:n]...)
		full := len(b.data) >= api.MaxTaskLog
		b.mu.Unlock()
		if err != nil || full {
			return
		}
	}
}

// saveLog uploads the attempt's whole output as final, from offset sent
// (what the live uploads already gave the server), and returns its size
// and whether it was cut.
func (r *taskRunner) saveLog(ctx context.Context, id string, n int, containerID string, sent int64) (int64, bool) {
	var data []byte
	var cut bool
	var err error
	if containerID != "" {
		data, cut, err = r.readLog(ctx, containerID)
	}
	if err != nil {
		if ctx.Err() != nil {
			return 0, false
		}
		r.log.Warn("read task log", "task", id, "attempt", n, "err", err)
		data = nil // mark what was uploaded complete
	}
	if int64(len(data)) < sent {
		sent = 0 // (never expected) start over rather than leave a gap
	}
	if len(data) == 0 {
		// Nothing to keep: the report's log_bytes of 0 tells the server
		// the log is complete, so no upload (most short tasks print nothing).
		return 0, false
	}
	r.putFinalLog(ctx, id, n, data, sent)
	return int64(len(data)), cut
}

// putFinalLog uploads data, an attempt's whole output, as final from
// offset sent, retrying a few times; a server that lost a piece gets it
// all again.
func (r *taskRunner) putFinalLog(ctx context.Context, id string, n int, data []byte, sent int64) {
	for try := 1; ; try++ {
		err := r.putLog(ctx, id, n, sent, data[min(sent, int64(len(data))):], true)
		if err == nil || ctx.Err() != nil {
			return
		}
		if client.IsStatus(err, 400) && sent > 0 {
			sent = 0 // the server lost a piece: the whole log then
			continue
		}
		if isClientError(err) || try == finalLogTries {
			r.log.Warn("save task log", "task", id, "attempt", n, "err", err)
			return
		}
		sleep(ctx, time.Duration(try)*200*time.Millisecond)
	}
}

// readLog reads the container's whole output, keeping api.MaxTaskLog
// bytes and, when there was more, a line saying it was cut.
func (r *taskRunner) readLog(ctx context.Context, containerID string) ([]byte, bool, error) {
	rc, err := r.rt.Logs(ctx, containerID, false, -1)
	if err != nil {
		return nil, false, err
	}
	defer rc.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(io.LimitReader(rc, api.MaxTaskLog+1)); err != nil {
		return nil, false, err
	}
	data := b.Bytes()
	if len(data) <= api.MaxTaskLog {
		return data, false, nil
	}
	data = data[:api.MaxTaskLog]
	if data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	return append(data, cutNote...), true, nil
}

// isClientError: the server refused the request itself (4xx other than
// timeouts and throttling); sending it again changes nothing.
func isClientError(err error) bool {
	var e *client.Error
	return errors.As(err, &e) && e.Status >= 400 && e.Status < 500 && e.Status != 408 && e.Status != 429
}
