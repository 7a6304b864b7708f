package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"berth/internal/pullcache"
)

// The herd's cases.
const (
	caseShared   = "shared"
	casePerNode  = "per-engine"
	caseStraight = "straight"
)

// herdCase is what one way of pulling cost.
type herdCase struct {
	name    string
	wall    time.Duration   // from the start until the last pull ended
	pulls   []time.Duration // each engine's docker pull
	origin  map[string]blobCount
	caches  int
	stats   pullcache.Stats // summed over the case's caches
	loadEnd string
}

func (c herdCase) originRequests() (n, bytes int64) {
	for _, b := range c.origin {
		n += b.requests
		bytes += b.bytes
	}
	return n, bytes
}

type herdResult struct {
	repo       string
	push       time.Duration
	cases      []herdCase
	loadBefore string
}

// blobs is the number of distinct blobs the pulls fetched (layers and the
// config), the same in every case.
func (h herdResult) blobs() int {
	seen := map[string]bool{}
	for _, c := range h.cases {
		for d := range c.origin {
			seen[d] = true
		}
	}
	return len(seen)
}

// herd pushes the image once and has every engine pull it at the same
// moment, in each of the three ways, starting from empty engines.
func (b *bench) herd(ctx context.Context) (herdResult, error) {
	res := herdResult{repo: "bench/herd:1", loadBefore: loadavg()}
	t0 := time.Now()
	if _, err := b.berth.CLI(ctx, "image", "push", b.image, "--as", res.repo); err != nil {
		return res, err
	}
	res.push = time.Since(t0)
	agentToken, err := b.berth.CLI(ctx, "token", "create", "--role", "agent", "--description", "images bench caches")
	if err != nil {
		return res, err
	}
	agentToken = strings.TrimSpace(agentToken)
	for _, name := range []string{caseShared, casePerNode, caseStraight} {
		c, err := b.herdCase(ctx, name, agentToken, res.repo)
		if err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
		n, bytes := c.originRequests()
		logf("herd %s: %d engines in %s; origin: %d blob requests, %.1f MiB", name, len(b.engines), secs(c.wall), n, float64(bytes)/(1<<20))
		res.cases = append(res.cases, c)
	}
	return res, nil
}

func (b *bench) herdCase(ctx context.Context, name, agentToken, repo string) (herdCase, error) {
	c := herdCase{name: name, pulls: make([]time.Duration, len(b.engines))}
	for _, e := range b.engines {
		if err := e.empty(ctx); err != nil {
			return c, err
		}
	}
	b.proxy.take()
	refs := make([]string, len(b.engines))
	var caches []*pullcache.Cache
	cctx, stopCaches := context.WithCancel(ctx)
	var served sync.WaitGroup
	defer func() {
		stopCaches()
		served.Wait()
		for _, pc := range caches {
			pc.Close()
		}
	}()
	startCache := func(i int) (string, error) {
		pc, err := pullcache.New(pullcache.Config{
			Dir:     filepath.Join(b.tmp, "caches", fmt.Sprintf("%s-%d", name, i+1)),
			Origins: []string{"http://" + b.proxy.addr},
			Token:   func() string { return agentToken },
		})
		if err != nil {
			return "", err
		}
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			pc.Close()
			return "", err
		}
		caches = append(caches, pc)
		served.Add(1)
		go func() { defer served.Done(); pc.Serve(cctx, ln) }()
		return ln.Addr().String(), nil
	}
	for i := range b.engines {
		switch {
		case name == caseStraight:
			refs[i] = pullcache.Reference(b.proxy.addr, repo)
		case name == caseShared && i > 0:
			refs[i] = refs[0]
		default:
			addr, err := startCache(i)
			if err != nil {
				return c, err
			}
			refs[i] = pullcache.Reference(addr, repo)
		}
	}
	c.caches = len(caches)

	// Every pull starts at the same moment.
	go0 := make(chan struct{})
	errs := make([]error, len(b.engines))
	var wg sync.WaitGroup
	for i, e := range b.engines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-go0
			t0 := time.Now()
			_, errs[i] = e.docker(ctx, "--config", b.config, "pull", "-q", refs[i])
			c.pulls[i] = time.Since(t0)
		}()
	}
	t0 := time.Now()
	close(go0)
	wg.Wait()
	c.wall = time.Since(t0)
	c.loadEnd = loadavg()
	for i, err := range errs {
		if err != nil {
			return c, fmt.Errorf("%s: %w", b.engines[i].name, err)
		}
	}
	c.origin = b.proxy.take()
	for _, pc := range caches {
		s := pc.Stats()
		c.stats.OriginBlobRequests += s.OriginBlobRequests
		c.stats.OriginBlobBytes += s.OriginBlobBytes
		c.stats.BlobMisses += s.BlobMisses
		c.stats.BlobJoins += s.BlobJoins
		c.stats.BlobHits += s.BlobHits
		c.stats.ServedBlobBytes += s.ServedBlobBytes
		c.stats.OriginManifestRequests += s.OriginManifestRequests
	}
	return c, nil
}
