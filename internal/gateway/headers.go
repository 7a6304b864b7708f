package gateway

// Request and response headers: forwarding headers set, hop-by-hop
// headers dropped, request ids, and request bodies that may be replayed.

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"sync"

	"github.com/valyala/fasthttp"
)

// prepareRequest readies the request for the upstream: forwarding headers
// set, hop-by-hop headers dropped (but for a WebSocket upgrade's), the
// protocol HTTP/1.1 so that the upstream connection is kept alive. It
// reports whether the request is a WebSocket upgrade, and the request id.
func prepareRequest(ctx *fasthttp.RequestCtx) (websocket bool, reqID []byte) {
	req := &ctx.Request
	h := &req.Header
	flags := scanHeaders(h.RawHeaders())

	if flags&fUpgrade != 0 && h.ConnectionUpgrade() && bytes.EqualFold(h.PeekBytes(hUpgrade), []byte("websocket")) {
		websocket = true
	}
	if flags&(fConnection|fHop) != 0 {
		dropHopHeaders(h, websocket)
	}
	if websocket {
		h.SetCanonical(hConnection, vUpgrade)
	}
	if !h.IsHTTP11() {
		h.SetProtocolBytes(vHTTP11)
	}
	req.UseHostHeader = true                // the Host as the client sent it
	req.URI().DisablePathNormalizing = true // the path as the client sent it

	var buf [128]byte
	xff := appendClientIP(buf[:0], ctx)
	if flags&fXFF != 0 {
		// The client's list (from all its X-Forwarded-For lines), then its
		// address.
		var v []byte
		for _, prior := range h.PeekAll(string(hXForwardedFor)) {
			if prior = bytes.TrimSpace(prior); len(prior) > 0 {
				v = append(append(v, prior...), ", "...)
			}
		}
		xff = append(v, xff...)
		h.DelBytes(hXForwardedFor)
	}
	h.SetCanonical(hXForwardedFor, xff)
	if ctx.IsTLS() {
		h.SetCanonical(hXForwardedProto, vHTTPS)
	} else {
		h.SetCanonical(hXForwardedProto, vHTTP)
	}
	h.SetCanonical(hXForwardedHost, h.Host())
	if flags&fRequestID != 0 {
		reqID = h.PeekBytes(hXRequestID)
	}
	if len(reqID) == 0 {
		var id [32]byte
		h.SetCanonical(hXRequestID, newRequestID(&id))
		reqID = h.PeekBytes(hXRequestID)
	}
	return websocket, reqID
}

// Header classes found by scanHeaders.
const (
	fConnection = 1 << iota // Connection
	fHop                    // another hop-by-hop header: Keep-Alive, Proxy-*, TE, Trailer, Upgrade; or Expect
	fUpgrade                // Upgrade
	fXFF                    // X-Forwarded-For
	fRequestID              // X-Request-Id
)

// scanHeaders classifies the header names of a raw header block, so that
// the common request (none of them) costs one pass and no lookups.
func scanHeaders(raw []byte) (flags uint8) {
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		flags |= classify(line[:colon])
	}
	return flags
}

func classify(k []byte) uint8 {
	switch len(k) {
	case 2:
		if bytes.EqualFold(k, []byte("te")) {
			return fHop
		}
	case 6:
		if bytes.EqualFold(k, []byte("expect")) {
			return fHop
		}
	case 7:
		if bytes.EqualFold(k, []byte("trailer")) {
			return fHop
		}
		if bytes.EqualFold(k, []byte("upgrade")) {
			return fHop | fUpgrade
		}
	case 10:
		if bytes.EqualFold(k, []byte("connection")) {
			return fConnection
		}
		if bytes.EqualFold(k, []byte("keep-alive")) {
			return fHop
		}
	case 12:
		if bytes.EqualFold(k, []byte("x-request-id")) {
			return fRequestID
		}
	case 15:
		if bytes.EqualFold(k, []byte("x-forwarded-for")) {
			return fXFF
		}
	}
	if len(k) > 6 && bytes.EqualFold(k[:6], []byte("proxy-")) {
		return fHop
	}
	return 0
}

// dropHopHeaders removes the hop-by-hop headers of a request: those named
// by Connection, Connection itself, Keep-Alive, Proxy-*, TE, Trailer and
// Upgrade (kept, with Connection, for a WebSocket upgrade), and Expect (the
// gateway has answered it).
func dropHopHeaders(h *fasthttp.RequestHeader, websocket bool) {
	var fields []field
	raw := h.RawHeaders()
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		fields = append(fields, field{line[:colon], bytes.TrimSpace(line[colon+1:])})
	}
	removeFields(h, fields, hopDropper(fields, websocket), isSpecialRequestHeader)
	if !websocket {
		h.DelBytes(hConnection) // also clears "close": the upstream connection is kept alive
	}
}

// field is a header field.
type field struct{ k, v []byte }

// hopDropper says which of fields are hop-by-hop.
func hopDropper(fields []field, websocket bool) func(k []byte) bool {
	var named [][]byte // by Connection
	for _, f := range fields {
		if classify(f.k)&fConnection != 0 {
			for _, tok := range tokens(f.v) {
				if !isHopKeep(tok, websocket) {
					named = append(named, tok)
				}
			}
		}
	}
	return func(k []byte) bool {
		switch c := classify(k); {
		case c&fConnection != 0:
			return !websocket
		case c&fUpgrade != 0:
			return !websocket
		case c&fHop != 0:
			return true
		}
		for _, n := range named {
			if bytes.EqualFold(k, n) {
				return true
			}
		}
		return false
	}
}

// headerEditor is what removeFields needs of a request or response header.
type headerEditor interface {
	DelBytes(key []byte)
	AddBytesKV(key, value []byte)
}

// removeFields deletes from h the fields (h's in their order) that drop
// selects. fasthttp deletes a field by moving the last one into its place;
// the order of fields of the same name matters, so when a name repeats, the
// other fields (but those fasthttp keeps apart, special) are taken out and
// added back in their order. The values of fields must not alias h's.
func removeFields(h headerEditor, fields []field, drop func(k []byte) bool, special func(k []byte) bool) {
	dropAny, repeated := false, false
	for i, f := range fields {
		dropAny = dropAny || drop(f.k)
		for _, g := range fields[:i] {
			repeated = repeated || bytes.EqualFold(f.k, g.k)
		}
	}
	if !dropAny {
		return
	}
	var kept []field
	for _, f := range fields {
		switch {
		case drop(f.k):
			h.DelBytes(f.k)
		case repeated && !special(f.k):
			kept = append(kept, f)
		}
	}
	for _, f := range kept {
		h.DelBytes(f.k)
	}
	for _, f := range kept {
		h.AddBytesKV(f.k, f.v)
	}
}

// isSpecialRequestHeader: fasthttp keeps these apart from the other fields.
func isSpecialRequestHeader(k []byte) bool {
	for _, s := range []string{"Host", "Content-Type", "Content-Length", "User-Agent", "Cookie", "Connection", "Transfer-Encoding", "Trailer"} {
		if len(k) == len(s) && bytes.EqualFold(k, []byte(s)) {
			return true
		}
	}
	return false
}

// isSpecialResponseHeader: fasthttp keeps these apart from the other fields.
func isSpecialResponseHeader(k []byte) bool {
	for _, s := range []string{"Content-Type", "Content-Length", "Content-Encoding", "Server", "Set-Cookie", "Connection", "Transfer-Encoding", "Trailer", "Date"} {
		if len(k) == len(s) && bytes.EqualFold(k, []byte(s)) {
			return true
		}
	}
	return false
}

// isHopKeep reports whether a token of Connection names something other
// than a header to drop.
func isHopKeep(tok []byte, websocket bool) bool {
	return bytes.EqualFold(tok, []byte("close")) || bytes.EqualFold(tok, []byte("keep-alive")) ||
		(websocket && bytes.EqualFold(tok, []byte("upgrade")))
}

// tokens splits a comma-separated header value.
func tokens(v []byte) [][]byte {
	var out [][]byte
	for len(v) > 0 {
		tok := v
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if tok = bytes.TrimSpace(tok); len(tok) > 0 {
			out = append(out, tok)
		}
	}
	return out
}

// cleanResponseHeader removes the hop-by-hop headers of an upstream's
// response (those named by Connection, Connection, Keep-Alive, Proxy-*, TE,
// Trailer, Upgrade). The client connection's own keep-alive is the server's
// business, so the upstream's Connection: close does not end it.
func cleanResponseHeader(h *fasthttp.ResponseHeader) {
	h.ResetConnectionClose()
	if !bytes.Equal(h.Protocol(), vHTTP11) {
		h.SetProtocol(vHTTP11) // the gateway speaks HTTP/1.1 to its client, whatever the upstream's version
	}
	var flags uint8
	for k := range h.All() {
		flags |= classify(k)
	}
	if flags&(fConnection|fHop) == 0 {
		return
	}
	var fields []field
	for k, v := range h.All() {
		fields = append(fields, field{append([]byte(nil), k...), append([]byte(nil), v...)})
	}
	removeFields(h, fields, hopDropper(fields, false), isSpecialResponseHeader)
	h.DelBytes(hConnection)
}

// appendClientIP appends the client's IP address.
func appendClientIP(dst []byte, ctx *fasthttp.RequestCtx) []byte {
	sc, ok := ctx.Conn().(*srvConn)
	if ok && sc.ip != nil {
		return append(dst, sc.ip...)
	}
	n := len(dst)
	if a, isTCP := ctx.RemoteAddr().(*net.TCPAddr); isTCP {
		dst = a.AddrPort().Addr().Unmap().AppendTo(dst)
	} else {
		dst = append(dst, ctx.RemoteIP().String()...)
	}
	if ok {
		sc.ip = append([]byte(nil), dst[n:]...)
	}
	return dst
}

// newRequestID makes 32 random hex digits.
func newRequestID(id *[32]byte) []byte {
	const hexDigits = "0123456789abcdef"
	a, b := rand.Uint64(), rand.Uint64()
	for i := range 16 {
		id[i] = hexDigits[a&15]
		id[16+i] = hexDigits[b&15]
		a >>= 4
		b >>= 4
	}
	return id[:]
}

// replayableBody makes sure the request can be sent twice: a streamed
// body of at most maxReplayBody is read into memory. It reports false for
// a larger body, which stays streamed.
func replayableBody(req *fasthttp.Request) (bool, error) {
	if !req.IsBodyStream() {
		return true, nil
	}
	cl := req.Header.ContentLength()
	if cl > maxReplayBody {
		return false, nil
	}
	r := req.BodyStream()
	bp := replayBufs.Get().(*[]byte)
	defer replayBufs.Put(bp)
	buf := *bp
	if cl >= 0 {
		if _, err := io.ReadFull(r, buf[:cl]); err != nil {
			return false, err
		}
		req.SetBody(buf[:cl])
		return true, nil
	}
	// Chunked: read up to one byte more than the limit to know.
	n, err := io.ReadFull(r, buf[:maxReplayBody+1])
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		req.SetBody(buf[:n])
		return true, nil
	case err != nil:
		return false, err
	}
	prefix := append([]byte(nil), buf[:n]...)
	req.SetBodyStream(io.MultiReader(bytes.NewReader(prefix), r), -1)
	return false, nil
}

var replayBufs = sync.Pool{New: func() any {
	b := make([]byte, maxReplayBody+1)
	return &b
}}
