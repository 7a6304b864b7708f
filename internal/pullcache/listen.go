package pullcache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// addrFile keeps the address a port-0 listener got, for the next start.
const addrFile = "listen-addr"

// Listen opens the cache's listener on addr, an IPv4 loopback address
// with a port (127.0.0.1:7071): Docker Engine pulls from 127.0.0.0/8 over
// plain HTTP without configuration, and the cache has no auth, so it
// never listens elsewhere. Port 0 takes the port the cache had last time
// (kept in <Dir>/listen-addr) when it is free, else any free one: Docker
// names the images it pulls after host:port, so a restarted agent should
// find them under the same name.
func (c *Cache) Listen(addr string) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("pull cache address %q: want 127.0.0.1:<port>: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || ip.To4() == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("pull cache address %q: want an IPv4 loopback address (127.0.0.0/8): the cache serves images without auth, and Docker pulls only from loopback without configuration", addr)
	}
	if port != "0" {
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			return nil, fmt.Errorf("pull cache: %w", err)
		}
		return ln, nil
	}
	keep := filepath.Join(c.dir, addrFile)
	if prev, err := os.ReadFile(keep); err == nil {
		p := strings.TrimSpace(string(prev))
		if h, _, err := net.SplitHostPort(p); err == nil && h == host {
			if ln, err := net.Listen("tcp4", p); err == nil {
				return ln, nil
			}
			c.log.Warn("pull cache: the address of the last run is taken; images pulled through it will be pulled again under the new one", "address", p)
		}
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("pull cache: %w", err)
	}
	if err := c.writeFileAtomic(keep, []byte(ln.Addr().String()+"\n")); err != nil {
		c.log.Warn("pull cache: recording the listen address", "err", err)
	}
	return ln, nil
}

// Serve answers on ln until ctx ends, then closes the listener and the
// cache's connections. It does not Close the cache.
func (c *Cache) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           c,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No write timeout: a blob takes what it takes.
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("pull cache: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("pull cache: %w", err)
	}
	return nil
}

// Reference is how Docker is to be asked for repo@digest or repo:tag of
// berth's registry through the cache listening at addr (ln.Addr()):
// "127.0.0.1:7071/hello@sha256:...".
func Reference(addr, ref string) string {
	return addr + "/" + ref
}
