package aws

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/compute-sdk/compute"
)

// TestTLSMinimum: every HTTP client the provider uses refuses a server
// that offers nothing newer than TLS 1.1, and works with TLS 1.2.
func TestTLSMinimum(t *testing.T) {
	for _, tc := range []struct {
		name    string
		max     uint16
		wantErr bool
	}{
		{"tls1.1 server", tls.VersionTLS11, true},
		{"tls1.2 server", tls.VersionTLS12, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeEC2(t)
			srv := httptest.NewUnstartedServer(f)
			srv.TLS = &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tc.max}
			srv.Config.ErrorLog = log.New(io.Discard, "", 0)
			srv.StartTLS()
			t.Cleanup(srv.Close)
			isolateAWSEnv(t)
			t.Setenv("AWS_CA_BUNDLE", "") // trust comes from srv.Client()
			// A caller-supplied client that would allow TLS 1.0 is raised to 1.2.
			base := srv.Client()
			base.Transport.(*http.Transport).TLSClientConfig.MinVersion = tls.VersionTLS10
			p, err := New(t.Context(), Config{
				Region: "eu-west-1", Endpoint: srv.URL, HTTPClient: base, MaxAttempts: 1,
				Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
			})
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.ListClusters(t.Context())
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "protocol version") {
					t.Fatalf("ListClusters over TLS 1.1 = %v, want a protocol version failure", err)
				}
			} else if err != nil {
				t.Fatalf("ListClusters over TLS 1.2: %v", err)
			}
			// The client the provider reports (for conformance) is pinned too.
			for _, hc := range p.HTTPClients() {
				if !tc.wantErr {
					break
				}
				_, err := hc.Get(srv.URL)
				if err == nil || !strings.Contains(err.Error(), "protocol version") {
					t.Errorf("reported client reached a TLS 1.1 server: %v", err)
				}
			}
		})
	}
}

// TestDefaultClientTLSMinimum: without a caller's client, the SDK's own
// client is pinned as well.
func TestDefaultClientTLSMinimum(t *testing.T) {
	f := newFakeEC2(t)
	srv := httptest.NewUnstartedServer(f)
	srv.TLS = &tls.Config{MaxVersion: tls.VersionTLS11}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	isolateAWSEnv(t)
	p, err := New(t.Context(), Config{
		Region: "eu-west-1", Endpoint: srv.URL, MaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ListClusters(t.Context()); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("ListClusters = %v, want a protocol version failure", err)
	}
	hcs := p.HTTPClients()
	if len(hcs) != 1 {
		t.Fatalf("HTTPClients = %d", len(hcs))
	}
	tr := hcs[0].Transport.(*http.Transport)
	if tr.TLSClientConfig == nil || tr.TLSClientConfig.MinVersion < tls.VersionTLS12 {
		t.Errorf("reported transport allows TLS below 1.2: %+v", tr.TLSClientConfig)
	}
}

func TestHTTPClientMustBeATransport(t *testing.T) {
	isolateAWSEnv(t)
	_, err := New(t.Context(), Config{Region: "eu-west-1", HTTPClient: &http.Client{Transport: roundTripFunc(nil)}})
	if !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("err = %v, want ErrInvalidArgument", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestOpenByName(t *testing.T) {
	f := newFakeEC2(t)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	isolateAWSEnv(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKID")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "SECRET")
	pv, err := compute.Open(t.Context(), "aws", map[string]string{
		"region": "eu-west-1", "endpoint": srv.URL, "owner": "o1", "callerCidrs": "198.51.100.7/32, 2001:db8::1/128",
		"pollInterval": "1ms", "imageId": "ami-0debian12",
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer pv.Close()
	p := pv.(*Provider)
	if p.cfg.Owner != "o1" || p.cfg.ImageID != "ami-0debian12" || p.cfg.InstanceType != DefaultInstanceType {
		t.Errorf("config = %+v", p.cfg)
	}
	cps, err := p.CallerPrefixes(t.Context())
	if err != nil || len(cps) != 2 {
		t.Errorf("CallerPrefixes = %v, %v", cps, err)
	}
	// Credentials from the environment reach the wire (SigV4 with AKID).
	if _, err := p.ListClusters(t.Context()); err != nil {
		t.Fatal(err)
	}
	caps := compute.CapabilitiesOf(p)
	if !caps.StopStart || !caps.Reboot || caps.Firewall != compute.FirewallMutable || !caps.GC ||
		!caps.IPv6 || caps.RuleLimit != 60 || caps.EncryptionAtRest != "EBS AES-256 (KMS)" {
		t.Errorf("capabilities = %+v", caps)
	}

	for _, bad := range []map[string]string{{"nope": "x"}, {"callerCidrs": "10.0.0.1/8"}, {"pollInterval": "soon"}} {
		if _, err := compute.Open(t.Context(), "aws", bad); !errors.Is(err, compute.ErrInvalidArgument) {
			t.Errorf("Open(%v) = %v, want ErrInvalidArgument", bad, err)
		}
	}
	if _, err := compute.Open(t.Context(), "aws", 42); !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("Open(42) = %v", err)
	}
}

func TestNoCallerPrefixesUnlessConfigured(t *testing.T) {
	p := newTestProvider(t, newFakeEC2(t))
	if _, err := p.CallerPrefixes(t.Context()); !errors.Is(err, compute.ErrUnsupported) {
		t.Errorf("CallerPrefixes = %v, want ErrUnsupported", err)
	}
}

func TestNoRegion(t *testing.T) {
	isolateAWSEnv(t)
	_, err := New(context.Background(), Config{Credentials: credentials.NewStaticCredentialsProvider("A", "B", "")})
	if !errors.Is(err, compute.ErrPrecondition) {
		t.Errorf("err = %v, want ErrPrecondition", err)
	}
}

// TestLocalProviderHasNoAWSSDK: a program that imports only the local
// provider does not compile the AWS SDK.
func TestLocalProviderHasNoAWSSDK(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	root := "../.."
	for _, pkgs := range [][]string{{"."}, {"./policy/..."}, {"./provider/local/..."}} {
		args := append([]string{"list", "-deps"}, pkgs...)
		cmd := exec.Command(gobin, args...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			if strings.Contains(string(out), "matched no packages") || strings.Contains(string(out), "no Go files") {
				t.Logf("%v: %s (skipped)", pkgs, strings.TrimSpace(string(out)))
				continue
			}
			t.Fatalf("go list %v: %v\n%s", pkgs, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "github.com/aws/") || strings.HasPrefix(line, "github.com/compute-sdk/compute/provider/aws") {
				t.Errorf("%v depends on %s", pkgs, line)
			}
		}
	}
}
