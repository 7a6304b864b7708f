// Package pullcache is the agent's pull-through image cache: a small
// read-only registry on loopback that Docker pulls instance images
// through, and that fetches what it lacks from berth's servers' registry
// (the origin) with the agent's token.
//
// Why a cache of our own and not Distribution's proxy mode: when N pulls
// ask for the same missing layer at once, Distribution's proxy fetches it
// N times from the origin (the merge of concurrent fetches, its PR #3428,
// was never merged). Many hosts pulling one new image at the same moment
// is exactly what a rollout does, so the merge is the point here. The
// cache also needs no configuration file, no storage driver and no
// second copy of Distribution's globals in the agent.
//
// The choices, and why:
//
//   - Loopback only (127.0.0.0/8, see Listen): Docker Engine treats those
//     addresses as an insecure registry by default, so no daemon
//     configuration and no TLS is needed on any host. The listener has no
//     auth: whoever can reach the host's loopback can pull what the
//     agent's token can pull (that token is pull-only).
//   - Read-only: GET and HEAD of /v2/, of manifests and of blobs; every
//     other method is 405 with a distribution-spec error; other GETs
//     (tags/list, referrers, the catalog) are 404 UNSUPPORTED. Names,
//     tags and digests are checked against the distribution-spec grammar
//     (sha256 digests only) before anything else, and file names are made
//     from checked digests or from hashes, never from a name or a tag.
//   - Blobs are kept by digest only (<dir>/blobs/sha256/<2 hex>/<hex>),
//     so every image that has a layer shares its one copy, whatever the
//     repository it was pulled under. A blob is written to <dir>/tmp,
//     hashed while it streams, checked against its digest and its
//     Content-Length, fsynced and only then renamed into place: a cut
//     stream, a mismatch or a blob over Config.MaxBlobSize stores nothing.
//   - One fetch per blob: the first request for a missing digest starts
//     the fetch; every request for that digest that comes while it runs
//     joins it and streams from the growing temp file as it is written,
//     so N pulls of a 100 MiB layer progress together at the origin's
//     speed instead of waiting for the whole layer. Readers hold back the
//     last byte until the digest is verified, so no client ever receives
//     a complete body that turned out wrong: on a failure their stream is
//     cut and Docker retries.
//   - A fetch belongs to the cache, not to the request that started it:
//     when every waiting client goes away it runs on to the end (bounded
//     by the stall timeout and the size cap), so the next pull finds the
//     blob; Close abandons it and removes its temp file. A stream cut by
//     the origin is resumed with a Range request (from the next server
//     when there are several), a few times, before the fetch fails.
//   - Manifests by digest are stored like blobs and served from disk, so
//     a node keeps pulling the images it has seen while the servers are
//     down. Manifests by tag are asked of the origin every time (tags
//     move), with the client's Accept header, and the answer is stored
//     under its digest with a record of what the tag resolved to. When no
//     server answers, that last resolution is served, marked with the
//     Berth-Pullcache-Stale header and logged. A 404 from the origin
//     forgets the tag.
//   - Origin failures are told apart: a 401 or 403 is passed on as such
//     with a message that names the server and the agent's token (without
//     a WWW-Authenticate, so Docker does not try to log in to the cache);
//     a 404 is passed on; no answer or a 5xx from every server is 503.
//   - Access times are file mtimes (touched at most every few minutes),
//     so they survive restarts; Prune removes what was not used for a
//     while and what the caller does not want kept.
//   - Counters (Stats, and GET /debug/pullcache on the same listener)
//     say how many requests and bytes each blob cost the origin: the
//     herd benchmark expects exactly one request per blob.
package pullcache
