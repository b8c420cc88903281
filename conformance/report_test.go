package conformance

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
)

func TestReportTableAndJSON(t *testing.T) {
	r := &Report{
		Provider: "local",
		Started:  time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC),
		Duration: 95 * time.Second,
		Results: []Result{
			{Name: CheckSSHLogin, Status: StatusPass, Reason: "both keys", Duration: 1234 * time.Millisecond},
			{Name: CheckDenyDNAT, Status: StatusSkip, Reason: "no CAP_NET_ADMIN\ninside", Duration: 20 * time.Millisecond, unsupported: true},
			{Name: CheckRuleRevoke, Status: StatusFail, Reason: "still open", Duration: 7 * time.Second},
		},
	}
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("table has %d lines, want header + 3 + summary:\n%s", len(lines), out)
	}
	for _, want := range []string{"CHECK", "ssh/login", "pass", "1.2s", "deny/dnat", "no CAP_NET_ADMIN inside", "rule/revoke", "fail", "7s",
		"provider local: 3 checks, 1 passed, 1 failed, 1 skipped in 1m35s"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// Columns line up: every row starts its STATUS at the same offset.
	col := strings.Index(lines[0], "STATUS")
	for _, l := range lines[1:4] {
		if f := strings.Fields(l[col:]); len(f) == 0 || !strings.Contains("pass fail skip", f[0]) {
			t.Errorf("misaligned row %q", l)
		}
	}
	if !r.Failed() {
		t.Error("Failed() = false with a failing check")
	}
	if p, f, s := r.Counts(); p != 1 || f != 1 || s != 1 {
		t.Errorf("Counts() = %d, %d, %d", p, f, s)
	}

	j, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(j, &back); err != nil {
		t.Fatal(err)
	}
	res := back["results"].([]any)[0].(map[string]any)
	if back["provider"] != "local" || res["name"] != "ssh/login" || res["status"] != "pass" || res["duration"] != float64(1234*time.Millisecond) {
		t.Errorf("JSON = %s", j)
	}
	if strings.Contains(string(j), "unsupported") {
		t.Errorf("JSON exposes internal field: %s", j)
	}
}

func TestCheckNames(t *testing.T) {
	names := CheckNames()
	if len(names) != 23 {
		t.Errorf("%d checks, want 23", len(names))
	}
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			t.Errorf("duplicate check %s", n)
		}
		seen[n] = true
	}
	names[0] = "mutated"
	if CheckNames()[0] != CheckSSHLogin {
		t.Error("CheckNames returns the package's own slice")
	}
}

func TestOnlyMustMatch(t *testing.T) {
	_, err := Check(t.Context(), nil, Options{Only: []string{"rule/", "nosuch"}})
	if !errors.Is(err, compute.ErrInvalidArgument) || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("Check with a bad Only = %v, want ErrInvalidArgument naming it", err)
	}
}

func TestSelected(t *testing.T) {
	s := &suite{opts: Options{Only: []string{"rule/", "deny/tcp"}}}
	for name, want := range map[string]bool{
		CheckRuleRevoke: true, CheckRuleSet: true, CheckDenyTCP: true, CheckDenyUDP: false, CheckSSHLogin: false,
	} {
		if got := s.selected(name); got != want {
			t.Errorf("selected(%s) = %v, want %v", name, got, want)
		}
	}
}

func TestScanFor(t *testing.T) {
	needle := []byte("compute-conformance-marker-0123")
	for _, at := range []int{0, 1, 1<<20 - 5, 1 << 20, 3<<20 + 17} {
		data := make([]byte, 4<<20)
		copy(data[at:], needle)
		// A reader that returns odd-sized chunks, so matches straddle reads.
		n, got, err := scanFor(&chunky{data: data, step: 777_777}, needle)
		if err != nil || n < int64(at+len(needle)) || got != int64(at) {
			t.Errorf("needle at %d: scanFor = %d, %d, %v", at, n, got, err)
		}
	}
	n, got, err := scanFor(&chunky{data: make([]byte, 3<<20), step: 1 << 20}, needle)
	if err != nil || n != 3<<20 || got != -1 {
		t.Errorf("no needle: scanFor = %d, %d, %v", n, got, err)
	}
}

type chunky struct {
	data []byte
	step int
}

func (c *chunky) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, errEOF
	}
	n := min(len(p), c.step, len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

var errEOF = io.EOF
