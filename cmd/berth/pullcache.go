package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"berth/internal/pullcache"
)

// pullCacheOff is the --pull-cache value that runs no cache.
const pullCacheOff = "off"

const pullCacheHelp = "loopback address of this node's cache of berth's image registry, which the engine pulls through (port 0: the port of the last run, else a free one; off: none)"

// startPullCache runs this node's pull-through cache of berth's registry
// on loopback addr (port 0: the port of the last run, else a free one) in
// dir, fetching from the servers with the agent's token. It returns the
// address the engine pulls from ("" with --pull-cache off) and stops with
// ctx. Blobs no image on the node has used for three days are pruned.
func startPullCache(ctx context.Context, addr, dir string, servers []string, token string, log *slog.Logger) (string, error) {
	if addr == pullCacheOff {
		return "", nil
	}
	origins := make([]string, 0, len(servers))
	for _, s := range servers {
		if s = strings.TrimSpace(s); s != "" {
			origins = append(origins, s)
		}
	}
	pc, err := pullcache.New(pullcache.Config{Dir: filepath.Join(dir, "pullcache"), Origins: origins,
		Token: func() string { return token }, Log: log})
	if err != nil {
		return "", err
	}
	ln, err := pc.Listen(addr)
	if err != nil {
		pc.Close()
		return "", fmt.Errorf("--pull-cache %s: %w", addr, err)
	}
	go func() {
		if err := pc.Serve(ctx, ln); err != nil && ctx.Err() == nil {
			log.Warn("pull cache stopped", "err", err)
		}
		pc.Close()
	}()
	go func() {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if _, err := pc.Prune(72*time.Hour, nil); err != nil {
					log.Warn("prune pull cache", "err", err)
				}
			}
		}
	}()
	log.Info("pull cache listening", "addr", ln.Addr().String())
	return ln.Addr().String(), nil
}
