package compute

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
)

// wantField checks that err wraps ErrInvalidArgument and is a *FieldError
// naming field.
func wantField(t *testing.T, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one naming %q", field)
	}
	if !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("error %q does not wrap ErrInvalidArgument", err)
	}
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %q is %T, not a *FieldError", err, err)
	}
	if fe.Field != field {
		t.Errorf("error %q names field %q, want %q", err, fe.Field, field)
	}
	if !strings.Contains(err.Error(), field) {
		t.Errorf("message %q does not name %q", err, field)
	}
}

func TestValidateName(t *testing.T) {
	for _, name := range []string{"a", "web-1", "a0", strings.Repeat("a", 63), "x-y-z"} {
		if err := ValidateName("name", name); err != nil {
			t.Errorf("ValidateName(%q): %v", name, err)
		}
	}
	for _, name := range []string{"", strings.Repeat("a", 64), "1web", "-web", "web-", "Web", "we_b", "we b", "wéb", "web.1", "a\x00"} {
		t.Run(name, func(t *testing.T) {
			wantField(t, ValidateName("cluster", name), "cluster")
		})
	}
}

func TestValidateLabels(t *testing.T) {
	ok := map[string]string{"team": "ml", "app.kubernetes.io/name": "web", "A_b-c": "", "k": strings.Repeat("v", 255)}
	if err := ValidateLabels("labels", ok); err != nil {
		t.Fatal(err)
	}
	if err := ValidateLabels("labels", nil); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		labels map[string]string
		field  string
	}{
		{"empty key", map[string]string{"": "v"}, "labels"},
		{"long key", map[string]string{strings.Repeat("k", 64): "v"}, "labels"},
		{"bad key char", map[string]string{"a b": "v"}, "labels"},
		{"long value", map[string]string{"k": strings.Repeat("v", 256)}, "labels.k"},
		{"control in value", map[string]string{"k": "a\nb"}, "labels.k"},
		{"DEL in value", map[string]string{"k": "a\x7fb"}, "labels.k"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantField(t, ValidateLabels("labels", tc.labels), tc.field)
		})
	}
}

// authorizedKey returns the authorized_keys line of a public key.
func authorizedKey(t testing.TB, pub any, comment string) string {
	t.Helper()
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
	if comment != "" {
		line += " " + comment
	}
	return line
}

var rsaKeys sync.Map // bits -> *rsa.PrivateKey; RSA generation is slow

func rsaKey(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	if k, ok := rsaKeys.Load(bits); ok {
		return k.(*rsa.PrivateKey)
	}
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	rsaKeys.Store(bits, k)
	return k
}

func ed25519Key(t testing.TB) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return authorizedKey(t, pub, "me@laptop")
}

func TestParseSSHPublicKey(t *testing.T) {
	ecdsaKey := func(c elliptic.Curve) string {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return authorizedKey(t, &k.PublicKey, "")
	}
	ed := ed25519Key(t)
	good := map[string]string{
		"ed25519":         ed,
		"ed25519 padded":  "  " + ed + "\n",
		"ecdsa-p256":      ecdsaKey(elliptic.P256()),
		"ecdsa-p384":      ecdsaKey(elliptic.P384()),
		"ecdsa-p521":      ecdsaKey(elliptic.P521()),
		"rsa-3072":        authorizedKey(t, &rsaKey(t, 3072).PublicKey, "rsa@host"),
		"rsa-4096 no cmt": authorizedKey(t, &rsaKey(t, 4096).PublicKey, ""),
	}
	for name, line := range good {
		t.Run("ok/"+name, func(t *testing.T) {
			pub, _, err := ParseSSHPublicKey(line)
			if err != nil {
				t.Fatalf("ParseSSHPublicKey: %v", err)
			}
			if pub == nil {
				t.Fatal("nil key")
			}
		})
	}
	if _, comment, _ := ParseSSHPublicKey(ed); comment != "me@laptop" {
		t.Errorf("comment = %q", comment)
	}

	bad := map[string]string{
		"empty":         "",
		"blank":         "   ",
		"rsa-1024":      authorizedKey(t, &rsaKey(t, 1024).PublicKey, ""),
		"rsa-2048":      authorizedKey(t, &rsaKey(t, 2048).PublicKey, ""),
		"garbage":       "not a key",
		"truncated":     ed[:30],
		"options":       `from="10.0.0.0/8" ` + ed,
		"command":       `command="/bin/true" ` + ed,
		"two keys":      ed + "\n" + ed25519Key(t),
		"private key":   "-----BEGIN OPENSSH PRIVATE KEY-----",
		"cert type tag": "ssh-ed25519-cert-v01@openssh.com AAAA",
	}
	for name, line := range bad {
		t.Run("bad/"+name, func(t *testing.T) {
			if _, _, err := ParseSSHPublicKey(line); err == nil {
				t.Fatalf("ParseSSHPublicKey(%q) accepted", line)
			}
		})
	}
}

func TestValidateSSHKeys(t *testing.T) {
	ed := ed25519Key(t)
	if err := ValidateSSHKeys("sshKeys", []string{ed, authorizedKey(t, &rsaKey(t, 3072).PublicKey, "")}); err != nil {
		t.Fatal(err)
	}
	wantField(t, ValidateSSHKeys("sshKeys", nil), "sshKeys")
	wantField(t, ValidateSSHKeys("sshKeys", []string{}), "sshKeys")
	wantField(t, ValidateSSHKeys("sshKeys", []string{ed, ""}), "sshKeys[1]")
	err := ValidateSSHKeys("sshKeys", []string{authorizedKey(t, &rsaKey(t, 1024).PublicKey, "")})
	wantField(t, err, "sshKeys[0]")
	if !strings.Contains(err.Error(), "1024") || !strings.Contains(err.Error(), "3072") {
		t.Errorf("rsa-1024 error %q should say the size and the minimum", err)
	}
	// The value in the message is abbreviated, not the whole key.
	var fe *FieldError
	errors.As(err, &fe)
	if len(fe.Value) > 40 {
		t.Errorf("value %q not abbreviated", fe.Value)
	}
}

func TestInstanceSpecValidate(t *testing.T) {
	good := InstanceSpec{Name: "web", RefID: "req-42", Cluster: "train", SSHKeys: []string{ed25519Key(t)}, Labels: map[string]string{"team": "ml"}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		mod   func(*InstanceSpec)
		field string
	}{
		{"empty name", func(s *InstanceSpec) { s.Name = "" }, "name"},
		{"bad name", func(s *InstanceSpec) { s.Name = "Web" }, "name"},
		{"long refid", func(s *InstanceSpec) { s.RefID = strings.Repeat("r", 129) }, "refId"},
		{"refid with space", func(s *InstanceSpec) { s.RefID = "a b" }, "refId"},
		{"bad cluster", func(s *InstanceSpec) { s.Cluster = "-x" }, "cluster"},
		{"empty key list", func(s *InstanceSpec) { s.SSHKeys = []string{} }, "sshKeys"},
		{"no keys", func(s *InstanceSpec) { s.SSHKeys = nil }, "sshKeys"},
		{"rsa-1024", func(s *InstanceSpec) { s.SSHKeys = []string{authorizedKey(t, &rsaKey(t, 1024).PublicKey, "")} }, "sshKeys[0]"},
		{"bad label", func(s *InstanceSpec) { s.Labels = map[string]string{"k": "\x01"} }, "labels.k"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.mod(&s)
			wantField(t, s.Validate(), tc.field)
		})
	}
	if k := (InstanceSpec{Name: "n"}).IdempotencyKey(); k != "n" {
		t.Errorf("IdempotencyKey without RefID = %q", k)
	}
	if k := good.IdempotencyKey(); k != "req-42" {
		t.Errorf("IdempotencyKey = %q", k)
	}
}

func TestClusterSpecValidate(t *testing.T) {
	if err := (ClusterSpec{Name: "train"}).Validate(); err != nil {
		t.Fatal(err)
	}
	wantField(t, ClusterSpec{}.Validate(), "name")
	wantField(t, ClusterSpec{Name: "ok", Labels: map[string]string{"": ""}}.Validate(), "labels")
}

func TestFieldError(t *testing.T) {
	err := InvalidField("rules[2].ports", "0", "ports must be 1-65535")
	if got, want := err.Error(), `invalid argument: rules[2].ports "0": ports must be 1-65535`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := InvalidField("sshKeys", "", "required").Error(), "invalid argument: sshKeys: required"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, ErrInvalidArgument) || errors.Is(err, ErrNotFound) {
		t.Error("FieldError must be ErrInvalidArgument and nothing else")
	}
	// Wrapped with context, it is still found.
	wrapped := errors.Join(errors.New("create web"), err)
	var fe *FieldError
	if !errors.As(wrapped, &fe) || fe.Field != "rules[2].ports" || !errors.Is(wrapped, ErrInvalidArgument) {
		t.Errorf("wrapped FieldError lost: %v", wrapped)
	}
}

func TestPrefixField(t *testing.T) {
	cases := []struct {
		prefix, field, want string
	}{
		{"rules[1]", "ports", "rules[1].ports"},
		{"rules", "[1]", "rules[1]"},
		{"spec", "", "spec"},
		{"a.b", "c.d", "a.b.c.d"},
	}
	for _, tc := range cases {
		err := PrefixField(tc.prefix, InvalidField(tc.field, "v", "why"))
		wantField(t, err, tc.want)
		var fe *FieldError
		errors.As(err, &fe)
		if fe.Value != "v" || fe.Reason != "why" {
			t.Errorf("PrefixField lost value or reason: %+v", fe)
		}
	}
	other := errors.New("boom")
	if PrefixField("x", other) != other {
		t.Error("PrefixField changed a non-field error")
	}
	if PrefixField("x", nil) != nil {
		t.Error("PrefixField(nil) != nil")
	}
	// A FieldError wrapped in context is found and re-rooted.
	wrapped := PrefixField("rules[0]", errors.Join(InvalidField("ports", "0", "bad")))
	wantField(t, wrapped, "rules[0].ports")
}

func TestTargetValidate(t *testing.T) {
	if err := InstanceTarget("i-1").Validate(); err != nil {
		t.Fatal(err)
	}
	if err := ClusterTarget("c").Validate(); err != nil {
		t.Fatal(err)
	}
	wantField(t, Target{Kind: "vpc", Name: "x"}.Validate(), "target.kind")
	wantField(t, Target{}.Validate(), "target.kind")
	wantField(t, InstanceTarget("").Validate(), "target.name")
	if s := ClusterTarget("train").String(); s != "cluster:train" {
		t.Errorf("String = %q", s)
	}
}

func TestProtocolAndPorts(t *testing.T) {
	for _, p := range []Protocol{ProtocolTCP, ProtocolUDP, ProtocolICMP, ProtocolICMPv6, ProtocolAll} {
		if !p.Valid() {
			t.Errorf("%s not valid", p)
		}
		if got, want := p.HasPorts(), p == ProtocolTCP || p == ProtocolUDP; got != want {
			t.Errorf("%s.HasPorts() = %v", p, got)
		}
	}
	for _, p := range []Protocol{"", "TCP", "sctp"} {
		if p.Valid() {
			t.Errorf("%q valid", p)
		}
	}
	r := Ports(80, 90)
	if !r.Contains(80) || !r.Contains(90) || r.Contains(79) || r.Contains(91) {
		t.Error("Contains is not inclusive")
	}
	if r.String() != "80-90" || Port(22).String() != "22" || !(PortRange{}).IsZero() || Port(1).IsZero() {
		t.Error("PortRange String/IsZero")
	}
}

func TestStatusTerminal(t *testing.T) {
	for _, s := range []Status{StatusPending, StatusRunning, StatusStopping, StatusStopped, StatusTerminating} {
		if s.Terminal() {
			t.Errorf("%s is terminal", s)
		}
	}
	for _, s := range []Status{StatusTerminated, StatusFailed} {
		if !s.Terminal() {
			t.Errorf("%s not terminal", s)
		}
	}
}

func TestListOptionsMatches(t *testing.T) {
	inst := &Instance{Cluster: "a", Labels: map[string]string{"team": "ml", "env": "dev"}}
	cases := []struct {
		o    ListOptions
		want bool
	}{
		{ListOptions{}, true},
		{ListOptions{Cluster: "a"}, true},
		{ListOptions{Cluster: "b"}, false},
		{ListOptions{Labels: map[string]string{"team": "ml"}}, true},
		{ListOptions{Labels: map[string]string{"team": "web"}}, false},
		{ListOptions{Labels: map[string]string{"owner": ""}}, false},
		{ListOptions{Cluster: "a", Labels: map[string]string{"team": "ml", "env": "dev"}}, true},
	}
	for i, tc := range cases {
		if got := tc.o.Matches(inst); got != tc.want {
			t.Errorf("case %d: Matches = %v, want %v", i, got, tc.want)
		}
	}
}
