package pullcache

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// BenchmarkHerd measures N clients pulling one missing 64 MiB blob at
// once through the cache, from an origin that sends 128 MiB/s: when the
// first byte reaches the clients, when the last client has it all, and
// what the origin sent. Run: go test -run - -bench Herd -benchtime 1x.
func BenchmarkHerd(b *testing.B) {
	for _, n := range []int{4, 20} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			for range b.N {
				herdOnce(b, n)
			}
		})
	}
}

func herdOnce(b *testing.B, n int) {
	blob := bytes.Repeat([]byte("berth"), (64<<20)/5)
	d := digestOf(blob)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		const chunk = 1 << 20
		for off := 0; off < len(blob); off += chunk {
			w.Write(blob[off:min(off+chunk, len(blob))])
			time.Sleep(time.Second / 128) // 128 MiB/s
		}
	}))
	defer origin.Close()
	c, err := New(Config{Dir: b.TempDir(), Origins: []string{origin.URL}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	srv := httptest.NewServer(c)
	defer srv.Close()

	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstByte, lastDone time.Duration
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(srv.URL + "/v2/app/blobs/" + d)
			if err != nil {
				b.Error(err)
				return
			}
			defer resp.Body.Close()
			one := make([]byte, 1)
			if _, err := io.ReadFull(resp.Body, one); err != nil {
				b.Error(err)
				return
			}
			fb := time.Since(start)
			got, err := io.Copy(io.Discard, resp.Body)
			if err != nil || got+1 != int64(len(blob)) {
				b.Errorf("read %d bytes: %v", got+1, err)
			}
			mu.Lock()
			firstByte = max(firstByte, fb)
			lastDone = max(lastDone, time.Since(start))
			mu.Unlock()
		}()
	}
	wg.Wait()
	s := c.Stats()
	b.ReportMetric(float64(firstByte.Milliseconds()), "ms-first-byte(slowest)")
	b.ReportMetric(float64(lastDone.Milliseconds()), "ms-all-done")
	b.ReportMetric(float64(s.OriginBlobRequests), "origin-requests")
	b.ReportMetric(float64(s.OriginBlobBytes)/float64(len(blob)), "origin-bytes/blob")
}
