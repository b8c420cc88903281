package aws

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"golang.org/x/crypto/ssh"
)

// isolateAWSEnv keeps the SDK's default chain from reading this machine's
// AWS files or reaching IMDS: tests never send traffic off the machine.
func isolateAWSEnv(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_CONFIG_FILE":             filepath.Join(dir, "config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
		"AWS_PROFILE":                 "",
		"AWS_REGION":                  "",
		"AWS_DEFAULT_REGION":          "",
		"AWS_ACCESS_KEY_ID":           "",
		"AWS_SECRET_ACCESS_KEY":       "",
		"AWS_SESSION_TOKEN":           "",
		"AWS_ENDPOINT_URL":            "",
		"AWS_ENDPOINT_URL_EC2":        "",
	} {
		t.Setenv(k, v)
	}
}

// newTestProvider returns a provider whose real ec2.Client talks to f.
func newTestProvider(t *testing.T, f *fakeEC2, mods ...func(*Config)) *Provider {
	t.Helper()
	isolateAWSEnv(t)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	cfg := Config{
		Region:       "eu-west-1",
		Endpoint:     srv.URL,
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""),
		VPCID:        f.vpc,
		SubnetID:     "subnet-0a1b2c3d",
		ImageID:      "ami-0debian12",
		KMSKeyID:     "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
		Owner:        "test-owner",
		PollInterval: time.Millisecond,
		MaxBackoff:   time.Millisecond,
		MaxAttempts:  3,
		GCGrace:      -1,
	}
	for _, m := range mods {
		m(&cfg)
	}
	p, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func testKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
}

// rewriter is a broken translation: it edits each request's form on the
// wire after the provider built it, bypassing the provider's own checks.
type rewriter struct {
	next awssdk.HTTPClient
	fn   func(action string, q url.Values)
}

func (r rewriter) Do(req *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	q, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, err
	}
	r.fn(q.Get("Action"), q)
	enc := q.Encode()
	req.Body = io.NopCloser(strings.NewReader(enc))
	req.ContentLength = int64(len(enc))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(enc)), nil }
	return r.next.Do(req)
}

func withRewrite(fn func(action string, q url.Values)) func(*Config) {
	return func(c *Config) {
		c.ec2Options = append(c.ec2Options, func(o *ec2.Options) { o.HTTPClient = rewriter{next: o.HTTPClient, fn: fn} })
	}
}

// ingress returns the ingress rules of a group as "proto|from|to|source"
// strings, sorted; group sources are "sg:<id>".
func (f *fakeEC2) ingress(groupID string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.rules {
		if r.Group == groupID && !r.Egress {
			out = append(out, r.short())
		}
	}
	sort.Strings(out)
	return out
}

func (r *fRule) short() string {
	src := r.CIDR4 + r.CIDR6
	if r.RefGroup != "" {
		src = "sg:" + r.RefGroup
	}
	return fmt.Sprintf("%s|%d|%d|%s", r.Proto, r.From, r.To, src)
}

func (f *fakeEC2) egress(groupID string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.rules {
		if r.Group == groupID && r.Egress {
			out = append(out, r.short())
		}
	}
	sort.Strings(out)
	return out
}

func (f *fakeEC2) groupByName(name string) *fGroup {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, g := range f.groups {
		if g.Name == name {
			return g
		}
	}
	return nil
}

func (f *fakeEC2) instance(id string) *fInstance {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.instances[id]
}

// audit checks the security model over everything the fake received and
// holds, the way a reviewer of the AWS account would:
//   - every RunInstances attaches groups by ID, never the VPC's default
//     group, encrypts every EBS mapping, maps no instance store, and
//     requires IMDSv2;
//   - every compute-owned group's ingress is exactly what the test asked
//     for (want, by group ID); a group not in want must have none, except
//     a cluster group's self rule; port 22 is never open unless asked;
//   - instance groups allow all egress over IPv4 and IPv6.
func (f *fakeEC2) audit(want map[string][]string) []string {
	var v []string
	for _, c := range f.callsOf("RunInstances") {
		q := c.Params
		sgs := list(q, "SecurityGroupId")
		if len(sgs) == 0 {
			v = append(v, "RunInstances without SecurityGroupId: EC2 attaches the default group")
		}
		f.mu.Lock()
		for _, id := range sgs {
			if g := f.groups[id]; g != nil && g.Name == "default" {
				v = append(v, "RunInstances attaches the VPC's default group "+id)
			}
		}
		f.mu.Unlock()
		if q.Has("SecurityGroup.1") {
			v = append(v, "RunInstances names groups by name")
		}
		n := 0
		for i := 1; q.Has(fmt.Sprintf("BlockDeviceMapping.%d.DeviceName", i)); i++ {
			p := fmt.Sprintf("BlockDeviceMapping.%d", i)
			n++
			switch {
			case q.Has(p + ".NoDevice"):
			case q.Has(p + ".VirtualName"):
				v = append(v, "RunInstances maps instance store "+q.Get(p+".DeviceName"))
			case q.Get(p+".Ebs.Encrypted") != "true":
				v = append(v, "RunInstances leaves volume "+q.Get(p+".DeviceName")+" unencrypted")
			}
		}
		if n == 0 {
			v = append(v, "RunInstances has no block device mapping: the root volume would follow the AMI (unencrypted)")
		}
		if q.Get("MetadataOptions.HttpTokens") != "required" {
			v = append(v, "RunInstances allows IMDSv1")
		}
	}
	f.mu.Lock()
	var groups []*fGroup
	for _, g := range f.groups {
		groups = append(groups, g)
	}
	f.mu.Unlock()
	for _, g := range groups {
		if g.Tags[tagOwner] == "" {
			continue
		}
		got := f.ingress(g.ID)
		exp := slices.Clone(want[g.ID])
		if g.Tags[tagKind] == kindCluster {
			exp = append(exp, "-1|-1|-1|sg:"+g.ID)
		}
		sort.Strings(exp)
		exp = slices.Compact(exp)
		for _, r := range got {
			if !slices.Contains(exp, r) {
				msg := fmt.Sprintf("group %s (%s) has unexpected ingress %s", g.ID, g.Name, r)
				if opens22(r) {
					msg += " (opens port 22)"
				}
				v = append(v, msg)
			}
		}
		for _, r := range exp {
			if !slices.Contains(got, r) {
				v = append(v, fmt.Sprintf("group %s (%s) lacks ingress %s", g.ID, g.Name, r))
			}
		}
		if g.Tags[tagKind] == kindInstance {
			eg := f.egress(g.ID)
			for _, r := range []string{"-1|-1|-1|0.0.0.0/0", "-1|-1|-1|::/0"} {
				if !slices.Contains(eg, r) {
					v = append(v, fmt.Sprintf("group %s lacks egress %s", g.ID, r))
				}
			}
		}
	}
	return v
}

func opens22(short string) bool {
	parts := strings.SplitN(short, "|", 4)
	if len(parts) != 4 {
		return false
	}
	var from, to int
	fmt.Sscan(parts[1], &from)
	fmt.Sscan(parts[2], &to)
	return parts[0] == "-1" || (parts[0] == "tcp" && from <= 22 && to >= 22)
}
