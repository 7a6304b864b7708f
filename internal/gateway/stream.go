package gateway

// Reading the upstream's response: header quirks (1xx, bare LF) and
// bodies streamed to the client (server-sent events, large bodies).

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/valyala/fasthttp"
)

// readResponseHeader reads the upstream's response header, passing over
// informational (1xx) responses other than 101.
func readResponseHeader(resp *fasthttp.Response, br *bufio.Reader) error {
	for range 100 {
		if err := readHeader(resp, br); err != nil {
			return err
		}
		if c := resp.StatusCode(); c >= 200 || c < 100 || c == fasthttp.StatusSwitchingProtocols {
			return nil
		}
	}
	return errors.New("upstream sent too many informational responses")
}

// readHeader reads one response header. fasthttp wants a header block to
// end with CRLF CRLF; one whose lines all end with a bare LF (as CGI scripts
// often write them, RFC 9112 2.2 lets a recipient accept it, and curl and
// browsers do) is read with its line ends made CRLF.
func readHeader(resp *fasthttp.Response, br *bufio.Reader) error {
	if _, err := br.Peek(1); err == nil {
		if n := bareLFHeader(br); n > 0 {
			return readBareLFHeader(resp, br, n)
		}
	}
	err := resp.Header.Read(br)
	if err != nil && err != io.EOF && !isTimeout(err) {
		// The header may have come in parts, the end with the last.
		if n := bareLFHeader(br); n > 0 {
			return readBareLFHeader(resp, br, n)
		}
	}
	return err
}

var (
	crlfcrlf = []byte("\r\n\r\n")
	lflf     = []byte("\n\n")
)

// bareLFHeader returns the length of the header block buffered in br if it
// ends with a bare LF blank line, else 0.
func bareLFHeader(br *bufio.Reader) int {
	b, _ := br.Peek(br.Buffered())
	if i := bytes.Index(b, crlfcrlf); i >= 0 {
		b = b[:i]
	}
	if i := bytes.Index(b, lflf); i >= 0 {
		return i + 2
	}
	return 0
}

// readBareLFHeader parses the first n buffered bytes of br, a header with
// bare LF line ends, and consumes them.
func readBareLFHeader(resp *fasthttp.Response, br *bufio.Reader, n int) error {
	b, _ := br.Peek(n)
	fixed := make([]byte, 0, n+n/8+2)
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			fixed = append(fixed, '\r')
		}
		fixed = append(fixed, c)
	}
	if err := resp.Header.Read(bufio.NewReader(bytes.NewReader(fixed))); err != nil {
		return err
	}
	_, err := br.Discard(n)
	return err
}

func isEventStream(resp *fasthttp.Response) bool {
	return bytes.HasPrefix(resp.Header.ContentType(), []byte("text/event-stream"))
}

// bodyStream is a response body read from an upstream as the client's
// connection takes it. Reads pass the upstream's errors on, so that a
// broken upstream breaks the client's response (no terminating chunk)
// rather than ending it as if complete.
type bodyStream struct {
	p       *Proxy
	u       *upstream
	body    io.Reader
	conn    net.Conn
	keep    bool
	eof     bool
	aborted atomic.Bool
	uresp   *fasthttp.Response
	release func(reuse bool)
	once    sync.Once
}

func (s *bodyStream) Read(b []byte) (int, error) {
	n, err := s.body.Read(b)
	if err == io.EOF {
		s.eof = true
	} else if err != nil {
		err = fmt.Errorf("upstream %s: %w", s.u.addr, err)
	}
	return n, err
}

// Close is called by the server once the body is sent (or sending failed).
func (s *bodyStream) Close() error {
	s.once.Do(func() {
		s.p.untrack(s)
		s.release(s.eof && s.keep && !s.aborted.Load())
		s.u.inflight.Add(-1)
	})
	return nil
}

// aborter is a long-lived transfer that Shutdown ends.
type aborter interface{ abort() }

// abort makes the pending read fail; the server then calls Close.
func (s *bodyStream) abort() {
	s.aborted.Store(true)
	_ = s.conn.Close()
}

func (t *tunnel) abort() { _ = t.Close() }

func (p *Proxy) track(s *bodyStream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		_ = s.conn.Close()
	default:
		p.live[s] = struct{}{}
	}
}

func (p *Proxy) untrack(c aborter) {
	p.mu.Lock()
	delete(p.live, c)
	p.mu.Unlock()
}
