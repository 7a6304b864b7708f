// Command gatewaysplit measures what a canary split costs berth's gateway:
// in one process it serves three tiny fasthttp upstreams and two gateway
// proxies on loopback, one routing the app without a split, one with
// Split{Weight: 1000} over two revisions, and loads them with wrk in
// alternating rounds. It reports the median req/s of each variant and the
// ratio of each split variant to the plain one:
//
//   - nosplit: the app as tables have it without revisions (as before splits);
//   - revisions: the same with Revisions but no Split (X-Berth-Revision and
//     the per-revision counters);
//   - split-new: the split, wrk sending no cookie, so every request is a new
//     client drawn a side and answered with a Set-Cookie (the worst case);
//   - split-cookie: the split, wrk sending the stable side's cookie.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"berth/internal/gateway"
)

var (
	rounds   = flag.Int("rounds", 5, "rounds of every variant, alternating")
	duration = flag.Duration("d", 5*time.Second, "wrk duration per variant and round")
	threads  = flag.Int("t", 2, "wrk threads")
	conns    = flag.Int("c", 32, "wrk connections")
	wrkBin   = flag.String("wrk", "/usr/bin/wrk", "wrk binary")
	out      = flag.String("out", "", "write the results here too")
)

// variant is one target of the benchmark.
type variant struct {
	name, addr, host string
	headers          []string // extra wrk -H values
	rps              []float64
	notes            []string // wrk's error lines, if any
}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench gatewaysplit: FAILED:", err)
		os.Exit(1)
	}
}

func run() error {
	load0 := loadavg()
	var ups []string
	for range 3 {
		addr, err := serveUpstream()
		if err != nil {
			return err
		}
		ups = append(ups, addr)
	}
	plain, plainAddr, err := startProxy()
	if err != nil {
		return err
	}
	defer plain.Shutdown()
	split, splitAddr, err := startProxy()
	if err != nil {
		return err
	}
	defer split.Shutdown()
	revs := []gateway.RevisionRoutes{{Revision: 1, Upstreams: ups[:2]}, {Revision: 2, Upstreams: ups[2:]}}
	plain.SetTable(gateway.NewTable([]gateway.AppRoutes{
		{App: "app", Hosts: []string{"app.test"}, Upstreams: ups},
		{App: "revs", Hosts: []string{"revs.test"}, Upstreams: ups, Revisions: revs},
	}))
	split.SetTable(gateway.NewTable([]gateway.AppRoutes{
		{App: "app", Hosts: []string{"app.test"}, Upstreams: ups, Revisions: revs,
			Split: &gateway.Split{Stable: 1, Canary: 2, Weight: 1000}},
	}))

	variants := []*variant{
		{name: "nosplit", addr: plainAddr, host: "app.test"},
		{name: "revisions", addr: plainAddr, host: "revs.test"},
		{name: "split-new", addr: splitAddr, host: "app.test"},
		{name: "split-cookie", addr: splitAddr, host: "app.test", headers: []string{"Cookie: berth-rev-app=1"}},
	}
	for _, v := range variants {
		if err := check(v); err != nil {
			return err
		}
	}
	before := split.RevisionStats()
	for r := range *rounds {
		for i := range variants {
			v := variants[(i+r)%len(variants)] // each round starts with the next variant
			rps, notes, err := runWrk(v)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			v.rps = append(v.rps, rps)
			v.notes = append(v.notes, notes...)
			fmt.Fprintf(os.Stderr, "round %d %-12s %10.0f req/s\n", r+1, v.name, rps)
		}
	}
	after := split.RevisionStats()
	load1 := loadavg()

	var b strings.Builder
	fmt.Fprintf(&b, "gateway split benchmark: wrk -t%d -c%d -d%s, %d rounds alternating, medians\n",
		*threads, *conns, *duration, *rounds)
	fmt.Fprintf(&b, "machine: %d CPUs (GOMAXPROCS %d), %s; wrk, proxies and 3 upstreams in one process/host\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Fprintf(&b, "load average before: %s\n", load0)
	base := median(variants[0].rps)
	for _, v := range variants {
		m := median(v.rps)
		fmt.Fprintf(&b, "%-13s %10.0f req/s  (rounds: %s)", v.name, m, joinRates(v.rps))
		if v != variants[0] {
			fmt.Fprintf(&b, "  ratio to nosplit %.3f", m/base)
		}
		b.WriteString("\n")
		for _, n := range dedupe(v.notes) {
			fmt.Fprintf(&b, "  wrk: %s\n", n)
		}
	}
	fmt.Fprintf(&b, "ratio split/no-split, no cookie (Set-Cookie on every answer): %.3f (target >= 0.95)\n",
		median(variants[2].rps)/base)
	fmt.Fprintf(&b, "ratio split/no-split, valid cookie:                          %.3f (target >= 0.95)\n",
		median(variants[3].rps)/base)
	fmt.Fprintf(&b, "split proxy, requests per revision during the runs: %s\n", revDelta(before, after))
	fmt.Fprintf(&b, "load average after:  %s\n", load1)
	fmt.Print(b.String())
	if *out != "" {
		return os.WriteFile(*out, []byte(b.String()), 0o644)
	}
	return nil
}

// serveUpstream serves 200 "ok" on a loopback port.
func serveUpstream() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	s := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			ctx.SetContentType("text/plain")
			ctx.SetBodyString("ok")
		},
		NoDefaultServerHeader: true,
		NoDefaultDate:         true,
	}
	go s.Serve(ln)
	return ln.Addr().String(), nil
}

func startProxy() (*gateway.Proxy, string, error) {
	p := gateway.NewProxy(nil, prometheus.NewRegistry(), nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	go p.Serve(ln)
	return p, ln.Addr().String(), nil
}

// check sends one request of v and verifies the answer, so that the
// numbers are of what they claim to be.
func check(v *variant) error {
	req, _ := http.NewRequest("GET", "http://"+v.addr+"/", nil)
	req.Host = v.host
	for _, h := range v.headers {
		k, val, _ := strings.Cut(h, ": ")
		req.Header.Set(k, val)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cookie, rev := resp.Header.Get("Set-Cookie"), resp.Header.Get("X-Berth-Revision")
	ok := resp.StatusCode == 200 && string(body) == "ok"
	switch v.name {
	case "nosplit":
		ok = ok && cookie == "" && rev == ""
	case "revisions":
		ok = ok && cookie == "" && rev != ""
	case "split-new":
		ok = ok && strings.HasPrefix(cookie, "berth-rev-app="+rev+";")
	case "split-cookie":
		ok = ok && cookie == "" && rev == "1"
	}
	if !ok {
		return fmt.Errorf("%s: unexpected answer %d %q Set-Cookie %q X-Berth-Revision %q", v.name, resp.StatusCode, body, cookie, rev)
	}
	return nil
}

var (
	reqsRe = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	errRe  = regexp.MustCompile(`(?m)^\s*(Non-2xx or 3xx responses:.*|Socket errors:.*)$`)
)

func runWrk(v *variant) (float64, []string, error) {
	args := []string{"-t" + strconv.Itoa(*threads), "-c" + strconv.Itoa(*conns), "-d" + durationArg(*duration), "-H", "Host: " + v.host}
	for _, h := range v.headers {
		args = append(args, "-H", h)
	}
	args = append(args, "http://"+v.addr+"/")
	b, err := exec.Command(*wrkBin, args...).CombinedOutput()
	if err != nil {
		return 0, nil, fmt.Errorf("wrk: %v: %s", err, b)
	}
	m := reqsRe.FindSubmatch(b)
	if m == nil {
		return 0, nil, fmt.Errorf("no Requests/sec in wrk's output: %s", b)
	}
	rps, err := strconv.ParseFloat(string(m[1]), 64)
	var notes []string
	for _, e := range errRe.FindAllSubmatch(b, -1) {
		notes = append(notes, strings.TrimSpace(string(e[1])))
	}
	return rps, notes, err
}

// durationArg formats d for wrk (whole seconds, at least 1).
func durationArg(d time.Duration) string {
	return strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second))) + "s"
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func joinRates(v []float64) string {
	var parts []string
	for _, r := range v {
		parts = append(parts, strconv.FormatFloat(r, 'f', 0, 64))
	}
	return strings.Join(parts, " ")
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// revDelta describes the requests each revision got between two readings.
func revDelta(before, after []gateway.RevisionStats) string {
	var parts []string
	for _, a := range after {
		n, errs := a.Requests, a.Errors
		for _, b := range before {
			if b.App == a.App && b.Revision == a.Revision {
				n, errs = n-b.Requests, errs-b.Errors
			}
		}
		parts = append(parts, fmt.Sprintf("revision %d: %d (%d errors)", a.Revision, n, errs))
	}
	return strings.Join(parts, ", ")
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return strings.TrimSpace(string(b))
}
