package main

import (
	"testing"
	"time"
)

func TestMaxRunningCountsOverlapsOnly(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	ls := []life{
		{start: at(0), die: at(2)},
		{start: at(1), die: at(3)},
		{start: at(2), die: at(4)}, // starts as the first dies: not three at once
		{start: at(5)},             // still running
		{create: at(6)},            // never started
	}
	if got := maxRunning(ls); got != 2 {
		t.Fatalf("maxRunning = %d, want 2", got)
	}
}

func TestRemovalSkipsContainersWithoutBothEvents(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ls := []life{
		{die: t0, destroy: t0.Add(300 * time.Millisecond)},
		{die: t0, destroy: t0.Add(100 * time.Millisecond)},
		{die: t0},
	}
	ds, missing := removal(ls)
	if missing != 1 || len(ds) != 2 || ds[0] != 100*time.Millisecond || ds[1] != 300*time.Millisecond {
		t.Fatalf("removal = %v, missing %d; want [100ms 300ms], 1 missing", ds, missing)
	}
}

func TestPercentileNearestRank(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 10; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 5 * time.Millisecond}, {90, 9 * time.Millisecond}, {100, 10 * time.Millisecond}, {0, time.Millisecond}} {
		if got := pct(ds, c.p); got != c.want {
			t.Errorf("pct(%v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := pct(nil, 50); got != 0 {
		t.Errorf("pct of nothing = %v, want 0", got)
	}
}
