package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CPU time of the processes that do a phase's work, from /proc: the
// side's `berth up` (API, controllers, etcd, agent, gateway), dockerd and
// containerd. The per-container processes (shims, docker-proxy, the
// hooks dockerd runs for each start) come and go and are not counted.

const clockTick = 100 // USER_HZ on Linux

// procCPU is utime+stime of pid.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state); utime is field 14, stime 15
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * time.Second / clockTick
}

// pidsWhere are the processes whose command line satisfies match.
func pidsWhere(match func(args []string) bool) []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []int
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		if match(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")) {
			pid, _ := strconv.Atoi(filepath.Base(d))
			out = append(out, pid)
		}
	}
	return out
}

// cpuSet is the processes whose CPU a phase reads, by name.
type cpuSet struct {
	names []string
	pids  map[string][]int
}

func (b *bench) cpuSet(s *berthSide) *cpuSet {
	c := &cpuSet{pids: map[string][]int{}}
	add := func(name string, pids []int) {
		if len(pids) > 0 {
			c.names = append(c.names, name)
			c.pids[name] = pids
		}
	}
	if s != nil && s.up != nil {
		dir := s.up.DataDir
		add("berth up", pidsWhere(func(a []string) bool {
			for i, x := range a {
				if x == "--data-dir" && i+1 < len(a) && a[i+1] == dir && len(a) > 1 && a[1] == "up" {
					return true
				}
			}
			return false
		}))
	}
	add("dockerd", pidsWhere(func(a []string) bool { return filepath.Base(a[0]) == "dockerd" }))
	add("containerd", pidsWhere(func(a []string) bool { return filepath.Base(a[0]) == "containerd" }))
	return c
}

type cpuReading map[string]time.Duration

func (c *cpuSet) read() cpuReading {
	r := cpuReading{}
	for name, pids := range c.pids {
		for _, p := range pids {
			r[name] += procCPU(p)
		}
	}
	return r
}

// since is what each process used after the earlier reading.
func (c *cpuSet) since(before cpuReading) string {
	now := c.read()
	var parts []string
	for _, name := range c.names {
		parts = append(parts, fmt.Sprintf("%s %.1fs", name, (now[name]-before[name]).Seconds()))
	}
	return strings.Join(parts, ", ")
}
