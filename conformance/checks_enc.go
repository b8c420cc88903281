package conformance

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
)

func (s *suite) checkEncryptionAtRest(ctx context.Context) outcome {
	if s.feats.EncryptionAtRest == "" {
		return fail("the provider does not report encryption at rest (Features().EncryptionAtRest is empty)")
	}
	rd, ok := s.p.(RawDiskReader)
	if !ok {
		return pass("reported: %s; the provider does not expose its backing store (conformance.RawDiskReader), so no raw scan", s.feats.EncryptionAtRest)
	}
	if err := s.ready("a1"); err != nil {
		return fail("%v", err)
	}
	a1 := s.member("a1")
	marker := "compute-conformance-marker-" + randHex(16)
	path := "/var/tmp/compute-conformance-marker-" + s.runID
	// 1 MiB of the marker: whole data blocks, nothing small enough to be
	// stored inline or merged away. Read it back so we know it is there.
	out, err := a1.exec(ctx, fmt.Sprintf("yes %s | head -c 1048576 > %s && sync && grep -c %s %s", marker, path, marker, path), nil)
	if err != nil {
		return fail("writing the marker inside a1: %v", err)
	}
	if strings.TrimSpace(string(out)) == "0" {
		return fail("the marker written inside a1 cannot be read back there")
	}
	defer a1.exec(context.WithoutCancel(ctx), "rm -f "+path, nil)
	var scanned int64
	var found int64 = -1
	err = rd.ReadRawDisk(ctx, a1.inst.ID, func(r io.Reader) error {
		scanned, found, err = scanFor(r, []byte(marker))
		return err
	})
	switch {
	case err != nil:
		return fail("reading a1's raw disk: %v", err)
	case scanned == 0:
		return fail("a1's raw disk is empty: nothing was scanned")
	case found >= 0:
		return fail("the marker written inside a1 is in plaintext in its raw disk at byte %d", found)
	}
	return pass("reported: %s; a 1 MiB marker written inside a1 is absent from its %d raw bytes", s.feats.EncryptionAtRest, scanned)
}

// scanFor reads r to the end and returns how many bytes it read and the
// offset of the first occurrence of needle (-1 if none).
func scanFor(r io.Reader, needle []byte) (n, at int64, err error) {
	buf := make([]byte, 1<<20+len(needle))
	keep := 0 // bytes carried over so a match across reads is found
	for {
		m, rerr := r.Read(buf[keep:])
		if m > 0 {
			window := buf[:keep+m]
			if i := bytes.Index(window, needle); i >= 0 {
				return n + int64(m), n - int64(keep) + int64(i), nil
			}
			n += int64(m)
			keep = min(len(needle)-1, len(window))
			copy(buf, window[len(window)-keep:])
		}
		if rerr == io.EOF {
			return n, -1, nil
		}
		if rerr != nil {
			return n, -1, rerr
		}
	}
}

// quiet drops the test servers' handshake errors: they are the point.
var quiet = log.New(io.Discard, "", 0)

func (s *suite) checkEncryptionInTransit(ctx context.Context) outcome {
	hp, ok := s.p.(HTTPClientProvider)
	var clients []*http.Client
	if ok {
		clients = hp.HTTPClients()
	}
	if len(clients) == 0 {
		return unsupported("not applicable: the provider has no HTTPS endpoint (no HTTP clients through conformance.HTTPClientProvider)")
	}
	problems := checkClientsTLS(ctx, clients)
	return failures(problems, "all %d HTTP clients of the provider refuse a TLS 1.1 server and speak TLS 1.2", len(clients))
}

// checkClientsTLS checks each client fails against a loopback server that
// offers at most TLS 1.1, and that it does speak TLS 1.2 (a TLS 1.2 server
// gets as far as the certificate, which the client rightly distrusts).
func checkClientsTLS(ctx context.Context, clients []*http.Client) []string {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	old := httptest.NewUnstartedServer(handler)
	old.TLS = &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}
	old.Config.ErrorLog = quiet
	old.StartTLS()
	defer old.Close()
	modern := httptest.NewUnstartedServer(handler)
	modern.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	modern.Config.ErrorLog = quiet
	modern.StartTLS()
	defer modern.Close()

	var problems []string
	get := func(c *http.Client, url string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	for i, c := range clients {
		if c == nil {
			c = http.DefaultClient
		}
		err := get(c, old.URL)
		switch {
		case err == nil:
			problems = append(problems, fmt.Sprintf("client %d completed a request over TLS 1.1", i))
		case !strings.Contains(err.Error(), "version"):
			problems = append(problems, fmt.Sprintf("client %d failed against TLS 1.1, but not on the protocol version: %v", i, err))
		}
		if err := get(c, modern.URL); err != nil && strings.Contains(err.Error(), "version") {
			problems = append(problems, fmt.Sprintf("client %d cannot speak TLS 1.2: %v", i, err))
		}
	}
	return problems
}
