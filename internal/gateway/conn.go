package gateway

// Connections: deadlines on the client and upstream sides, and the
// listener that wraps the client's.

import (
	"fmt"
	"log/slog"
	"net"
	"time"
)

// srvConn is a client connection with cheap read deadlines. fasthttp sets
// one twice per request: the idle timeout before it waits for the next
// request, and none once the request's first byte is in. Each is timer work
// in the runtime, microseconds per request at high rates. srvConn keeps the
// deadline it has while that is at most idleSlack earlier than the one
// asked for, and keeps it over the clearing: the rest of a request (its
// header, the first bytes of its body) comes well within it, and a long
// read (a streamed request body) clears it for real first (see
// clearReadDeadline). It also keeps the client's address formatted for
// X-Forwarded-For.
type srvConn struct {
	net.Conn
	rdl int64  // read deadline set on the connection, unix nanos; 0: none
	ip  []byte // client IP, formatted once
}

func (c *srvConn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		return nil
	}
	want := t.UnixNano()
	if c.rdl != 0 && c.rdl <= want && c.rdl >= want-int64(idleSlack) {
		return nil
	}
	c.rdl = want
	return c.Conn.SetReadDeadline(t)
}

func (c *srvConn) SetDeadline(t time.Time) error {
	c.rdl = 0
	if !t.IsZero() {
		c.rdl = t.UnixNano()
	}
	return c.Conn.SetDeadline(t)
}

// clearReadDeadline removes the read deadline of a client connection before
// a read that may take long.
func clearReadDeadline(c net.Conn) {
	if sc, ok := c.(*srvConn); ok && sc.rdl != 0 {
		sc.rdl = 0
		_ = sc.Conn.SetReadDeadline(time.Time{})
	}
}

// srvListener makes the accepted TCP connections srvConns, each with the
// idle timeout for its first request.
type srvListener struct{ net.Listener }

func (l srvListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	sc := &srvConn{Conn: tc}
	_ = sc.SetReadDeadline(time.Now().Add(idleTimeout))
	return sc, nil
}

// upConn is a connection to an upstream that keeps the deadline it has,
// like srvConn: a request's deadline is set only when the connection's is
// later than the request's or more than an eighth of the timeout earlier;
// so a request times out between 7/8 of its route's timeout and the
// timeout.
type upConn struct {
	net.Conn
	dl int64 // read and write deadline, unix nanos; 0: none; -1: not the same for both
}

// setDeadline gives conn the deadline of a request with timeout (none when
// timeout is 0).
func setDeadline(conn net.Conn, timeout time.Duration) error {
	uc, ok := conn.(*upConn)
	if timeout <= 0 {
		if ok && uc.dl == 0 {
			return nil
		}
		if ok {
			uc.dl = 0
		}
		return conn.SetDeadline(time.Time{})
	}
	t := time.Now().Add(timeout)
	want := t.UnixNano()
	if ok && uc.dl > 0 && uc.dl <= want && uc.dl >= want-int64(timeout/8) {
		return nil
	}
	if ok {
		uc.dl = want
	}
	return conn.SetDeadline(t)
}

// setReadDeadline sets the read deadline of conn alone.
func setReadDeadline(conn net.Conn, t time.Time) error {
	if uc, ok := conn.(*upConn); ok {
		uc.dl = -1
	}
	return conn.SetReadDeadline(t)
}

// CloseWrite half-closes the connection.
func (c *upConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// fasthttpLogger sends fasthttp's own messages to slog at debug level.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug("gateway: " + fmt.Sprintf(format, args...))
}
