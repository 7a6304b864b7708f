package pullcache

import (
	"encoding/json"
	"net/http"
	"sync"
)

// Stats are the cache's counters since it was made.
type Stats struct {
	// OriginBlobRequests counts blob GETs sent to the origin, the Range
	// requests that resume a cut stream included: one per blob is ideal.
	OriginBlobRequests int64 `json:"origin_blob_requests"`
	// OriginBlobBytes counts blob bytes received from the origin.
	OriginBlobBytes int64 `json:"origin_blob_bytes"`
	// OriginManifestRequests counts manifest GETs sent to the origin.
	OriginManifestRequests int64 `json:"origin_manifest_requests"`
	// BlobHits are blob answers from a stored file.
	BlobHits int64 `json:"blob_hits"`
	// BlobMisses are blob requests that started a fetch.
	BlobMisses int64 `json:"blob_misses"`
	// BlobJoins are blob requests that joined a fetch another started.
	BlobJoins int64 `json:"blob_joins"`
	// BlobFailures are fetches that stored nothing (origin error, cut
	// stream, digest mismatch, over the size limit, Close).
	BlobFailures int64 `json:"blob_failures"`
	// DigestMismatches are blobs and manifests whose bytes did not match
	// their digest.
	DigestMismatches int64 `json:"digest_mismatches"`
	// ServedBlobBytes counts blob bytes sent to clients.
	ServedBlobBytes int64 `json:"served_blob_bytes"`
	// ManifestHits are manifests by digest answered from the disk.
	ManifestHits int64 `json:"manifest_hits"`
	// StaleTags are tags answered from the cache because no server answered.
	StaleTags int64 `json:"stale_tags"`
	// Blobs has, by digest, what each blob fetched here cost the origin.
	Blobs map[string]BlobStats `json:"blobs"`
}

// BlobStats is one blob's share of Stats.
type BlobStats struct {
	OriginRequests int64 `json:"origin_requests"`
	OriginBytes    int64 `json:"origin_bytes"`
	// Requests counts the client requests for it (hits, misses and joins).
	Requests    int64 `json:"requests"`
	ServedBytes int64 `json:"served_bytes"`
}

type statsKeeper struct {
	mu    sync.Mutex
	s     Stats
	blobs map[string]*BlobStats
}

// Stats returns a copy of the counters.
func (c *Cache) Stats() Stats {
	k := &c.stats
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.s
	s.Blobs = make(map[string]BlobStats, len(k.blobs))
	for d, b := range k.blobs {
		s.Blobs[d] = *b
	}
	return s
}

func (c *Cache) serveStats(w http.ResponseWriter) {
	body, err := json.MarshalIndent(c.Stats(), "", "  ")
	if err != nil {
		writeError(w, asRegError(err, "stats"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(body, '\n'))
}

func (k *statsKeeper) update(digest string, fn func(s *Stats, b *BlobStats)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var b *BlobStats
	if digest != "" {
		if b = k.blobs[digest]; b == nil {
			b = &BlobStats{}
			k.blobs[digest] = b
		}
	}
	fn(&k.s, b)
}

func (k *statsKeeper) blobHit(d string) {
	k.update(d, func(s *Stats, b *BlobStats) { s.BlobHits++; b.Requests++ })
}

func (k *statsKeeper) blobStream(d string, started bool) {
	k.update(d, func(s *Stats, b *BlobStats) {
		if started {
			s.BlobMisses++
		} else {
			s.BlobJoins++
		}
		b.Requests++
	})
}

func (k *statsKeeper) served(d string, n int) {
	k.update(d, func(s *Stats, b *BlobStats) { s.ServedBlobBytes += int64(n); b.ServedBytes += int64(n) })
}

func (k *statsKeeper) originBlobRequest(d string) {
	k.update(d, func(s *Stats, b *BlobStats) { s.OriginBlobRequests++; b.OriginRequests++ })
}

func (k *statsKeeper) originBytes(d string, n int64) {
	k.update(d, func(s *Stats, b *BlobStats) { s.OriginBlobBytes += n; b.OriginBytes += n })
}

func (k *statsKeeper) blobFailed() { k.update("", func(s *Stats, _ *BlobStats) { s.BlobFailures++ }) }
func (k *statsKeeper) mismatch()   { k.update("", func(s *Stats, _ *BlobStats) { s.DigestMismatches++ }) }
func (k *statsKeeper) manifestHit() {
	k.update("", func(s *Stats, _ *BlobStats) { s.ManifestHits++ })
}
func (k *statsKeeper) originManifestRequest() {
	k.update("", func(s *Stats, _ *BlobStats) { s.OriginManifestRequests++ })
}
func (k *statsKeeper) staleTag() { k.update("", func(s *Stats, _ *BlobStats) { s.StaleTags++ }) }
