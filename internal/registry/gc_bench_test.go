package registry

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"
)

// BenchmarkCollectGarbage measures a collection, and its read-only window,
// on a registry of 200 one-layer images in 20 repositories: the first
// collection after a while (half of them deleted) and a steady one (5).
//
//	go test -run '^$' -bench CollectGarbage -benchtime 5x ./internal/registry/
func BenchmarkCollectGarbage(b *testing.B) {
	for _, deleted := range []int{100, 5} {
		b.Run(fmt.Sprintf("delete-%d-of-200", deleted), func(b *testing.B) {
			t := &testing.T{} // for the push helpers; its cleanups never run
			var readOnly, took time.Duration
			for range b.N {
				b.StopTimer()
				dir := b.TempDir()
				reg, err := New(Config{Dir: dir, Authorize: tokens})
				if err != nil {
					b.Fatal(err)
				}
				srv := httptest.NewServer(reg)
				base := srv.URL
				inUse := map[string]bool{}
				for i := range 200 {
					_, d := pushImage(t, base, fmt.Sprintf("repo%d", i%20), fmt.Sprint(i), "bearer:"+userToken)
					if i >= deleted {
						inUse[d] = true
					}
				}
				age(t, dir, 2*time.Hour)
				b.StartTimer()
				res, err := reg.CollectGarbage(context.Background(), inUse, time.Hour)
				b.StopTimer()
				srv.Close()
				reg.Close()
				if err != nil || res.Manifests != deleted {
					b.Fatalf("collection: %s, %v", res, err)
				}
				readOnly += res.ReadOnly
				took += res.Took
			}
			b.ReportMetric(float64(readOnly.Microseconds())/1000/float64(b.N), "ms-read-only/op")
			b.ReportMetric(float64(took.Microseconds())/1000/float64(b.N), "ms-total/op")
		})
	}
}
