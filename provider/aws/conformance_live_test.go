package aws

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"

	"github.com/compute-sdk/compute/conformance"
)

// TestConformanceLive runs the conformance suite against a real AWS
// account. It costs money and needs credentials, so it runs only with
// COMPUTE_AWS_LIVE=1 (never keyed on CI). Settings:
//
//	AWS credentials and region    the standard chain (AWS_PROFILE, AWS_REGION, ...)
//	COMPUTE_AWS_IMAGE             AMI with cloud-init, OpenSSH and systemd (e.g. Debian 12)
//	COMPUTE_AWS_CALLER_CIDRS      this machine's public address(es) as CIDRs, comma-separated
//	COMPUTE_AWS_VPC, COMPUTE_AWS_SUBNET, COMPUTE_AWS_TYPE, COMPUTE_AWS_KMS_KEY  optional
//
// Everything it creates carries compute:owner=compute-conformance; the
// suite deletes it, and the test then checks Inventory is empty.
func TestConformanceLive(t *testing.T) {
	if os.Getenv("COMPUTE_AWS_LIVE") != "1" {
		t.Skip("live AWS test: set COMPUTE_AWS_LIVE=1 with AWS credentials, COMPUTE_AWS_IMAGE and COMPUTE_AWS_CALLER_CIDRS to run it")
	}
	ctx := t.Context()
	ac, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		t.Skipf("COMPUTE_AWS_LIVE=1 but the AWS configuration does not load: %v", err)
	}
	if _, err := ac.Credentials.Retrieve(ctx); err != nil {
		t.Skipf("COMPUTE_AWS_LIVE=1 but no AWS credentials are present: %v", err)
	}
	image := os.Getenv("COMPUTE_AWS_IMAGE")
	if image == "" {
		t.Fatal("COMPUTE_AWS_LIVE=1 needs COMPUTE_AWS_IMAGE (an AMI with cloud-init, OpenSSH and systemd)")
	}
	var callers []netip.Prefix
	for _, s := range strings.Split(os.Getenv("COMPUTE_AWS_CALLER_CIDRS"), ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			t.Fatalf("COMPUTE_AWS_CALLER_CIDRS: %v", err)
		}
		callers = append(callers, p)
	}
	if len(callers) == 0 {
		t.Fatal("COMPUTE_AWS_LIVE=1 needs COMPUTE_AWS_CALLER_CIDRS (this machine's public address; it is never looked up from an outside service)")
	}
	p, err := New(ctx, Config{
		VPCID:        os.Getenv("COMPUTE_AWS_VPC"),
		SubnetID:     os.Getenv("COMPUTE_AWS_SUBNET"),
		ImageID:      image,
		InstanceType: os.Getenv("COMPUTE_AWS_TYPE"),
		KMSKeyID:     os.Getenv("COMPUTE_AWS_KMS_KEY"),
		Owner:        "compute-conformance",
		CallerCIDRs:  callers,
		GCGrace:      -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	conformance.Run(t, p, conformance.Options{Image: image, Timeout: 45 * time.Minute})

	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
	defer cancel()
	if rep, err := p.GC(cctx); err != nil || len(rep.Removed) > 0 {
		t.Errorf("GC after the suite removed %v (err %v): the suite leaked them", rep.Removed, err)
	}
	if inv, err := p.Inventory(cctx); err != nil || len(inv) > 0 {
		t.Errorf("objects left after the suite: %v (err %v)", inv, err)
	}
}
