package main

import (
	"context"

	"berth/bench/internal/berthup"
)

// berthUp is a `berth up` of the bench's own (bench/internal/berthup):
// free ports, a data dir in the bench's temporary dir. Its agent's pull
// cache is off: the bench runs the caches it measures in its own process.
type berthUp = berthup.Up

func startBerth(ctx context.Context, bin, tmp string) (*berthUp, error) {
	return berthup.Start(ctx, bin, tmp, logf, "--pull-cache", "off")
}
