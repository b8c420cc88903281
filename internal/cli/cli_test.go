package cli

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/internal/fake"
	"github.com/compute-sdk/compute/policy"
	"github.com/spf13/cobra"
)

func TestHelpIsComplete(t *testing.T) {
	f := NewFactory(&IOStreams{})
	root := NewCmdRoot(f)
	root.InitDefaultCompletionCmd()
	root.InitDefaultHelpCmd()
	// Commands people start with must show an example.
	needExample := map[string]bool{
		"computectl": true, "computectl create": true, "computectl list": true, "computectl get": true,
		"computectl delete": true, "computectl ssh": true, "computectl cluster": true,
		"computectl cluster create": true, "computectl firewall": true, "computectl firewall add": true,
		"computectl firewall list": true, "computectl firewall revoke": true, "computectl firewall set": true,
		"computectl verify": true, "computectl doctor": true, "computectl image build": true,
	}
	var walk func(c *cobra.Command)
	seen := 0
	walk = func(c *cobra.Command) {
		path := c.CommandPath()
		seen++
		if c.Short == "" {
			t.Errorf("%s: empty Short", path)
		}
		if c.Long == "" && !strings.HasPrefix(path, "computectl completion") && path != "computectl help" {
			t.Errorf("%s: empty Long", path)
		}
		if needExample[path] && c.Example == "" {
			t.Errorf("%s: no Example", path)
		}
		delete(needExample, path)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	for path := range needExample {
		t.Errorf("%s: command missing", path)
	}
	if seen < 30 {
		t.Errorf("walked %d commands, want the whole tree", seen)
	}

	// Every command's --help works and exits 0 without opening anything.
	e := newTestEnv(t)
	var paths [][]string
	var collect func(c *cobra.Command, prefix []string)
	collect = func(c *cobra.Command, prefix []string) {
		for _, sub := range c.Commands() {
			p := append(slices.Clone(prefix), sub.Name())
			paths = append(paths, p)
			collect(sub, p)
		}
	}
	collect(root, nil)
	for _, p := range paths {
		r := e.run(append(p, "--help")...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("computectl %s --help: exit %d, stdout %q", strings.Join(p, " "), r.code, r.stdout)
		}
	}
	if calls := e.fake.Calls(); len(calls) != 0 {
		t.Errorf("--help called the provider: %v", calls)
	}
}

func TestCreateFlags(t *testing.T) {
	var got *CreateOptions
	f := NewFactory(&IOStreams{})
	cmd := NewCmdCreate(f, func(o *CreateOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"web", "--cluster", "c1", "--ssh-key", "a.pub", "--ssh-key", "-",
		"--allow", "tcp:80 from 0.0.0.0/0", "--allow", "udp:53 from cluster:c1",
		"--ref-id", "r1", "--type", "small", "--image", "debian", "--label", "a=b", "--label", "c=d",
		"--wait", "--no-ssh-rule"})
	must(t, cmd.Execute())
	want := CreateOptions{Name: "web", Cluster: "c1", KeyFiles: []string{"a.pub", "-"},
		Allow: []string{"tcp:80 from 0.0.0.0/0", "udp:53 from cluster:c1"}, RefID: "r1", Type: "small",
		Image: "debian", Labels: []string{"a=b", "c=d"}, Wait: true, NoSSHRule: true}
	if got.Name != want.Name || got.Cluster != want.Cluster || !slices.Equal(got.KeyFiles, want.KeyFiles) ||
		!slices.Equal(got.Allow, want.Allow) || got.RefID != want.RefID || got.Type != want.Type ||
		got.Image != want.Image || !slices.Equal(got.Labels, want.Labels) || got.Wait != want.Wait ||
		got.NoSSHRule != want.NoSSHRule {
		t.Errorf("options = %+v\nwant %+v", *got, want)
	}
}

func TestFirewallAndSSHArgs(t *testing.T) {
	f := NewFactory(&IOStreams{})
	var fw *FirewallOptions
	add := NewCmdFirewallAdd(f, func(o *FirewallOptions) error { fw = o; return nil })
	add.SetArgs([]string{"cluster:c1", "tcp:80-90", "from", "10.0.0.0/8"})
	must(t, add.Execute())
	if fw.Target != "cluster:c1" || !slices.Equal(fw.Rules, []string{"tcp:80-90 from 10.0.0.0/8"}) {
		t.Errorf("firewall add: target %q rules %q", fw.Target, fw.Rules)
	}

	set := NewCmdFirewallSet(f, func(o *FirewallOptions) error { fw = o; return nil })
	set.SetArgs([]string{"web", "--rule", "tcp:1 from 1.2.3.4/32", "-f", "-", "--rule", "icmp from 10.0.0.0/8"})
	must(t, set.Execute())
	if fw.Target != "web" || fw.File != "-" || len(fw.Rules) != 2 {
		t.Errorf("firewall set: %+v", fw)
	}

	var so *SSHOptions
	for _, tc := range []struct {
		args    []string
		inst    string
		command []string
	}{
		{[]string{"web"}, "web", nil},
		{[]string{"web", "--", "ls", "-la"}, "web", []string{"ls", "-la"}},
		{[]string{"-i", "k", "web", "uname", "-a"}, "web", []string{"uname", "-a"}},
	} {
		c := NewCmdSSH(f, func(o *SSHOptions) error { so = o; return nil })
		c.SetArgs(tc.args)
		must(t, c.Execute())
		if so.Instance != tc.inst || !slices.Equal(so.Command, tc.command) {
			t.Errorf("ssh %q: instance %q command %q", tc.args, so.Instance, so.Command)
		}
	}

	var ao *ActionOptions
	del := NewCmdDelete(f, func(o *ActionOptions) error { ao = o; return nil })
	del.SetArgs([]string{"a", "b", "i-00000001"})
	must(t, del.Execute())
	if ao.Action != "delete" || !slices.Equal(ao.Instances, []string{"a", "b", "i-00000001"}) {
		t.Errorf("delete: %+v", ao)
	}
}

func TestCreateDefaultSSHRuleFromCallerOnly(t *testing.T) {
	e := newTestEnv(t)
	var inst compute.Instance
	r := e.runJSON(&inst, "create", "web", "--label", "env=dev")
	if inst.Name != "web" || inst.ID == "" || inst.Labels["env"] != "dev" {
		t.Fatalf("created %+v", inst)
	}
	if !strings.Contains(r.stderr, "opened tcp:22 to 10.229.255.1/32 (this host); use --no-ssh-rule to open nothing") {
		t.Errorf("stderr %q does not say what was opened", r.stderr)
	}
	rules := e.fake.Rules()
	if len(rules) != 1 {
		t.Fatalf("rules = %+v, want exactly the SSH rule", rules)
	}
	got := rules[0]
	if got.Target != compute.InstanceTarget(inst.ID) || got.Protocol != compute.ProtocolTCP ||
		got.Ports != compute.Port(22) || !slices.Equal(got.SourceCIDRs, []netip.Prefix{callerPrefix}) ||
		len(got.SourceClusters) != 0 {
		t.Errorf("default rule = %+v, want tcp:22 from %s on %s only", got, callerPrefix, inst.ID)
	}
}

func TestCreateOpensNothingWithoutCaller(t *testing.T) {
	for _, tc := range []struct {
		name string
		prep func(e *testEnv)
		args []string
		note string
	}{
		{"no-ssh-rule", func(*testEnv) {}, []string{"--no-ssh-rule"}, "no port is open (--no-ssh-rule)"},
		{"caller unknown", func(e *testEnv) { e.fake.Caller = nil }, nil, "could not tell this host's address"},
		{"no CallerPrefixer", func(e *testEnv) { e.useProvider(fake.Minimal(e.fake)) }, nil, "cannot tell this host's address"},
		{"wider than one address", func(e *testEnv) { e.fake.Caller = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} }, nil, "more than one address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			tc.prep(e)
			var inst compute.Instance
			r := e.runJSON(&inst, append([]string{"create", "web"}, tc.args...)...)
			if !strings.Contains(r.stderr, tc.note) {
				t.Errorf("stderr %q, want it to say %q", r.stderr, tc.note)
			}
			if rules := e.fake.Rules(); len(rules) != 0 {
				t.Errorf("rules = %+v, want none", rules)
			}
		})
	}
}

func TestCreateUserSSHRuleReplacesDefault(t *testing.T) {
	e := newTestEnv(t)
	var inst compute.Instance
	e.runJSON(&inst, "create", "web", "--allow", "tcp:22 from 192.0.2.0/24", "--allow", "tcp:443 from 0.0.0.0/0")
	rules := e.fake.Rules()
	var texts []string
	for _, r := range rules {
		texts = append(texts, formatRule(r.RuleSpec))
	}
	slices.Sort(texts)
	want := []string{formatRule(mustParse(t, "tcp:22 from 192.0.2.0/24")), formatRule(mustParse(t, "tcp:443 from 0.0.0.0/0"))}
	slices.Sort(want)
	if !slices.Equal(texts, want) {
		t.Errorf("rules = %q, want exactly %q (no default rule)", texts, want)
	}
}

func mustParse(t *testing.T, s string) compute.RuleSpec {
	t.Helper()
	r, err := policy.Parse(s)
	must(t, err)
	return r
}

func TestCreateKeys(t *testing.T) {
	e := newTestEnv(t)
	k1, k2 := newPublicKey(t), newPublicKey(t)
	file := filepath.Join(t.TempDir(), "keys")
	must(t, os.WriteFile(file, []byte("# comment\n"+k1+"\n\n"), 0o644))
	e.stdin = k2 + "\n"
	var inst compute.Instance
	e.runJSON(&inst, "create", "web", "--ssh-key", file, "--ssh-key", "-", "--no-ssh-rule")
	// The fake keeps no keys in the Instance; check through a second create
	// with a bad stdin key that keys really are read and validated.
	e.stdin = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 short\n"
	r := e.run("create", "web2", "--ssh-key", "-")
	if r.code != ExitUsage {
		t.Errorf("bad stdin key: exit %d, want %d", r.code, ExitUsage)
	}
	oneLineError(t, r, "--ssh-key")
}

func TestBadInputChangesNothing(t *testing.T) {
	priv := filepath.Join(t.TempDir(), "id_ed25519")
	must(t, os.WriteFile(priv, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"), 0o600))
	for _, tc := range []struct {
		name string
		args []string
		prep func(e *testEnv)
		code int
		want string // in the error line
	}{
		{"bad rule", []string{"create", "web", "--allow", "tcp:99999 from 0.0.0.0/0"}, nil, ExitUsage, "--allow"},
		{"rule without source", []string{"create", "web", "--allow", "tcp:80"}, nil, ExitUsage, "tcp:80"},
		{"bad CIDR", []string{"create", "web", "--allow", "tcp:80 from 10.0.0.1/33"}, nil, ExitUsage, "10.0.0.1/33"},
		{"missing key file", []string{"create", "web", "--ssh-key", "/nonexistent/key.pub"}, nil, ExitUsage, `--ssh-key "/nonexistent/key.pub": no such file`},
		{"private key", []string{"create", "web", "--ssh-key", priv}, nil, ExitUsage, "private key"},
		{"no default key", []string{"create", "web"}, func(e *testEnv) { os.Remove(filepath.Join(e.home, ".ssh", "id_ed25519.pub")) }, ExitUsage, "no key given"},
		{"bad name", []string{"create", "Web_1"}, nil, ExitUsage, "Web_1"},
		{"bad label", []string{"create", "web", "--label", "novalue"}, nil, ExitUsage, "--label"},
		{"bad cluster", []string{"create", "web", "--cluster", "-x"}, nil, ExitUsage, "--cluster"},
		{"unknown cluster", []string{"create", "web", "--cluster", "nope", "--no-ssh-rule"}, nil, ExitNotFound, "nope"},
		{"unknown instance get", []string{"get", "ghost"}, nil, ExitNotFound, `instance "ghost"`},
		{"unknown instance delete", []string{"delete", "keep", "ghost"}, nil, ExitNotFound, `instance "ghost"`},
		{"unknown instance stop", []string{"stop", "ghost"}, nil, ExitNotFound, `instance "ghost"`},
		{"unknown instance ssh", []string{"ssh", "ghost"}, nil, ExitNotFound, `instance "ghost"`},
		{"unknown instance firewall", []string{"firewall", "add", "ghost", "tcp:80 from 10.0.0.0/8"}, nil, ExitNotFound, `instance "ghost"`},
		{"bad rule firewall", []string{"firewall", "add", "keep", "tcp:0 from 10.0.0.0/8"}, nil, ExitUsage, "tcp:0"},
		{"bad target", []string{"firewall", "add", "vpc:x", "tcp:80 from 10.0.0.0/8"}, nil, ExitUsage, "vpc:x"},
		{"bad rule set", []string{"firewall", "set", "keep", "--rule", "tcp:80 from 10.0.0.0/8", "--rule", "bogus"}, nil, ExitUsage, "bogus"},
		{"set without rules", []string{"firewall", "set", "keep"}, nil, ExitUsage, "--none"},
		{"set missing file", []string{"firewall", "set", "keep", "-f", "/nonexistent/rules"}, nil, ExitUsage, "no such file"},
		{"bad rule id", []string{"firewall", "revoke", "22"}, nil, ExitUsage, "RULE-ID"},
		{"unknown rule id", []string{"firewall", "revoke", "fw-0000000000000000"}, nil, ExitNotFound, "fw-0000000000000000"},
		{"unknown cluster delete", []string{"cluster", "delete", "nope"}, nil, ExitNotFound, "nope"},
		{"bad output", []string{"list", "-o", "xml"}, nil, ExitUsage, "xml"},
		{"unknown flag", []string{"create", "web", "--bogus"}, nil, ExitUsage, "bogus"},
		{"missing argument", []string{"create"}, nil, ExitUsage, "create"},
		{"unknown command", []string{"lst"}, nil, ExitUsage, `did you mean list`},
		{"unknown subcommand", []string{"cluster", "craete"}, nil, ExitUsage, "craete"},
		{"unknown profile", []string{"list", "--profile", "nope"}, nil, ExitUsage, "nope"},
		{"unknown provider", []string{"list", "--provider", "nope"}, nil, ExitNotFound, "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			// One instance whose rules must survive every failed command.
			keep := e.mustCreate("keep", "--allow", "tcp:8080 from 10.0.0.0/8")
			rulesBefore := e.fake.Rules()
			mutBefore := len(e.fake.Mutations())
			if tc.prep != nil {
				tc.prep(e)
			}
			r := e.run(tc.args...)
			if r.code != tc.code {
				t.Errorf("exit code %d, want %d (stderr %q)", r.code, tc.code, r.stderr)
			}
			oneLineError(t, r, tc.want)
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			// Only revoking an unknown ID needs the provider to say it is
			// unknown; everything else is refused before any change is tried.
			allowed := []string(nil)
			if tc.name == "unknown rule id" {
				allowed = []string{"RevokeRule"}
			}
			if m := e.fake.Mutations()[mutBefore:]; !slices.Equal(m, allowed) {
				t.Errorf("provider changes were attempted: %v", m)
			}
			if after := e.fake.Rules(); !slices.EqualFunc(after, rulesBefore, func(a, b compute.FirewallRule) bool { return a.ID == b.ID }) {
				t.Errorf("rules changed: %v -> %v", rulesBefore, after)
			}
			var list []compute.Instance
			e.runJSON(&list, "list")
			if len(list) != 1 || list[0].ID != keep.ID {
				t.Errorf("instances after = %+v, want only keep", list)
			}
		})
	}
}

func TestInstanceCommandsJSON(t *testing.T) {
	e := newTestEnv(t)
	e.fake.PendingPolls = 2
	var c compute.Cluster
	e.runJSON(&c, "cluster", "create", "train", "--label", "team=ml")
	if c.Name != "train" || c.Labels["team"] != "ml" {
		t.Errorf("cluster create = %+v", c)
	}
	var w1 compute.Instance
	e.runJSON(&w1, "create", "w1", "--cluster", "train", "--wait")
	if w1.Status != compute.StatusRunning || w1.Cluster != "train" {
		t.Errorf("create --wait = %+v, want running in train", w1)
	}
	e.fake.PendingPolls = 0
	w2 := e.mustCreate("w2", "--cluster", "train", "--type", "medium")
	lone := e.mustCreate("lone")

	// Idempotent by name: the same create returns the same instance.
	if again := e.mustCreate("lone"); again.ID != lone.ID {
		t.Errorf("second create made %s, want %s", again.ID, lone.ID)
	}

	var list []compute.Instance
	e.runJSON(&list, "list")
	if got := names(list); !slices.Equal(got, []string{"lone", "w1", "w2"}) {
		t.Errorf("list = %v", got)
	}
	e.runJSON(&list, "list", "--cluster", "train")
	if got := names(list); !slices.Equal(got, []string{"w1", "w2"}) {
		t.Errorf("list --cluster train = %v", got)
	}
	r := e.run("list", "-q")
	if r.stdout != lone.ID+"\n"+w1.ID+"\n"+w2.ID+"\n" {
		t.Errorf("list -q = %q", r.stdout)
	}

	var got compute.Instance
	e.runJSON(&got, "get", "w2")
	if got.ID != w2.ID || got.Type != "medium" || len(got.SSH.HostKeys) != 1 {
		t.Errorf("get w2 = %+v", got)
	}
	e.runJSON(&got, "get", w2.ID) // by ID
	if got.Name != "w2" {
		t.Errorf("get by ID = %+v", got)
	}

	var acts []ActionResult
	e.runJSON(&acts, "stop", "w1", "--wait")
	if len(acts) != 1 || acts[0].Status != compute.StatusStopped {
		t.Errorf("stop = %+v", acts)
	}
	e.runJSON(&acts, "start", w1.ID)
	if len(acts) != 1 || acts[0].Status != compute.StatusRunning {
		t.Errorf("start = %+v", acts)
	}
	e.runJSON(&acts, "reboot", "w1")
	if len(acts) != 1 || acts[0].Action != "reboot" {
		t.Errorf("reboot = %+v", acts)
	}

	var detail struct {
		compute.Cluster
		Members []compute.Instance     `json:"members"`
		Rules   []compute.FirewallRule `json:"rules"`
	}
	e.runJSON(&detail, "cluster", "get", "train")
	if detail.Name != "train" || !slices.Equal(names(detail.Members), []string{"w1", "w2"}) {
		t.Errorf("cluster get = %+v", detail)
	}

	// A cluster with members cannot be deleted: conflict, exit 4.
	r = e.run("cluster", "delete", "train")
	if r.code != ExitConflict {
		t.Errorf("cluster delete with members: exit %d, want %d", r.code, ExitConflict)
	}
	oneLineError(t, r, "train")

	e.runJSON(&acts, "terminate", "w1", "w2")
	if len(acts) != 2 || acts[0].Status != compute.StatusTerminated {
		t.Errorf("terminate = %+v", acts)
	}
	var cl []compute.Cluster
	e.runJSON(&cl, "cluster", "list")
	if len(cl) != 1 {
		t.Errorf("cluster list = %+v", cl)
	}
	var deleted []map[string]string
	e.runJSON(&deleted, "cluster", "delete", "train")
	e.runJSON(&cl, "cluster", "list")
	if len(cl) != 0 {
		t.Errorf("cluster list after delete = %+v", cl)
	}
	e.runJSON(&list, "list")
	if got := names(list); !slices.Equal(got, []string{"lone"}) {
		t.Errorf("list after delete = %v", got)
	}
}

func names(list []compute.Instance) []string {
	var out []string
	for _, i := range list {
		out = append(out, i.Name)
	}
	return out
}

func TestFirewallCommandsJSON(t *testing.T) {
	e := newTestEnv(t)
	e.run("cluster", "create", "train")
	e.run("cluster", "create", "web")
	inst := e.mustCreate("w1", "--cluster", "train")

	var added RuleView
	e.runJSON(&added, "firewall", "add", "w1", "tcp:8080-8090", "from", "10.0.0.0/8", "#", "api")
	if added.Target != compute.InstanceTarget(inst.ID) || added.Ports != compute.Ports(8080, 8090) ||
		added.Description != "api" || !strings.HasPrefix(added.ID, "fw-") || added.Rule == "" {
		t.Errorf("firewall add = %+v", added)
	}
	// Adding it again changes nothing and returns the same rule.
	var again RuleView
	e.runJSON(&again, "firewall", "add", "instance:w1", "tcp:8080-8090 from 10.0.0.0/8")
	if again.ID != added.ID {
		t.Errorf("re-add gave %s, want %s", again.ID, added.ID)
	}
	var cr RuleView
	e.runJSON(&cr, "firewall", "add", "cluster:train", "udp:53 from cluster:web")
	if cr.Target != compute.ClusterTarget("train") || !slices.Equal(cr.SourceClusters, []string{"web"}) {
		t.Errorf("cluster rule = %+v", cr)
	}

	var rules []RuleView
	e.runJSON(&rules, "firewall", "list", "w1")
	if len(rules) != 1 || rules[0].ID != added.ID {
		t.Errorf("firewall list w1 = %+v", rules)
	}
	e.runJSON(&rules, "firewall", "list")
	if len(rules) != 2 {
		t.Errorf("firewall list (all) = %+v", rules)
	}

	// The web cluster is the source of a rule: deleting it is a conflict.
	if r := e.run("cluster", "delete", "web"); r.code != ExitConflict {
		t.Errorf("deleting a source cluster: exit %d, want %d", r.code, ExitConflict)
	}

	ruleFile := filepath.Join(t.TempDir(), "rules")
	must(t, os.WriteFile(ruleFile, []byte("# web rules\ntcp:443 from 0.0.0.0/0\n\nicmp from 192.168.0.0/16\n"), 0o644))
	e.runJSON(&rules, "firewall", "set", "w1", "-f", ruleFile, "--rule", "tcp:22 from 192.0.2.1/32")
	if len(rules) != 3 || slices.ContainsFunc(rules, func(r RuleView) bool { return r.ID == added.ID }) {
		t.Errorf("firewall set = %+v, want the 3 new rules only", rules)
	}
	mut := len(e.fake.Mutations())
	var rules2 []RuleView
	e.runJSON(&rules2, "firewall", "set", "w1", "-f", ruleFile, "--rule", "tcp:22 from 192.0.2.1/32")
	if !slices.EqualFunc(rules, rules2, func(a, b RuleView) bool { return a.ID == b.ID }) {
		t.Errorf("second set = %+v, want %+v", rules2, rules)
	}
	if got := len(e.fake.Mutations()); got != mut+1 {
		t.Errorf("second set made %d provider calls", got-mut)
	}

	var revoked []map[string]string
	e.runJSON(&revoked, "firewall", "revoke", rules[0].ID)
	e.runJSON(&rules, "firewall", "list", "w1")
	if len(rules) != 2 {
		t.Errorf("after revoke: %+v", rules)
	}
	e.runJSON(&rules, "firewall", "set", "w1", "--none")
	if len(rules) != 0 {
		t.Errorf("set --none = %+v", rules)
	}
	if got := e.fake.Rules(); len(got) != 1 || got[0].ID != cr.ID {
		t.Errorf("rules left = %+v, want only the cluster rule", got)
	}
}

func TestTableOutput(t *testing.T) {
	e := newTestEnv(t)
	inst := e.mustCreate("web")
	r := e.run("list")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "NAME") || !strings.Contains(r.stdout, inst.ID) {
		t.Errorf("list table:\n%s", r.stdout)
	}
	r = e.run("get", "web")
	if r.code != 0 || !strings.Contains(r.stdout, "Host key:") || !strings.Contains(r.stdout, inst.SSH.HostKeys[0].Fingerprint) {
		t.Errorf("get table:\n%s", r.stdout)
	}
	r = e.run("get", "web", "-o", "yaml")
	if r.code != 0 || !strings.Contains(r.stdout, "id: "+inst.ID) {
		t.Errorf("get yaml:\n%s", r.stdout)
	}
	e.env["COMPUTE_OUTPUT"] = "json"
	r = e.run("types")
	var types []compute.InstanceType
	if err := json.Unmarshal([]byte(r.stdout), &types); err != nil || len(types) == 0 {
		t.Errorf("COMPUTE_OUTPUT=json types: %v\n%s", err, r.stdout)
	}
}

func TestUnsupported(t *testing.T) {
	e := newTestEnv(t)
	e.mustCreate("web")
	e.useProvider(fake.Minimal(e.fake))
	for _, args := range [][]string{
		{"stop", "web"}, {"reboot", "web"}, {"firewall", "list", "web"}, {"gc"}, {"types"},
	} {
		r := e.run(args...)
		if r.code != ExitError {
			t.Errorf("%v on a minimal provider: exit %d, want %d", args, r.code, ExitError)
		}
		oneLineError(t, r, "unsupported")
	}
}

func TestGCTypesVersion(t *testing.T) {
	e := newTestEnv(t)
	e.fake.Leftovers = []string{"netns ct-i-00000009"}
	var rep compute.GCReport
	e.runJSON(&rep, "gc")
	if !slices.Equal(rep.Removed, []string{"netns ct-i-00000009"}) {
		t.Errorf("gc = %+v", rep)
	}
	e.runJSON(&rep, "gc")
	if len(rep.Removed) != 0 {
		t.Errorf("second gc = %+v", rep)
	}
	var types []compute.InstanceType
	e.runJSON(&types, "types")
	if len(types) != 2 || !types[0].Default {
		t.Errorf("types = %+v", types)
	}
	r := e.run("caller")
	if r.code != 0 || r.stdout != callerPrefix.String()+"\n" {
		t.Errorf("caller: %+v", r)
	}
	var ci CallerInfo
	e.runJSON(&ci, "caller")
	if len(ci.Prefixes) != 1 || ci.Prefixes[0] != callerPrefix {
		t.Errorf("caller -o json: %+v", ci)
	}
	e.fake.Caller = nil
	if r := e.run("caller"); r.code != ExitError {
		t.Errorf("caller unknown: exit %d", r.code)
	}
	var v VersionInfo
	e.runJSON(&v, "version")
	if v.Version == "" || v.Go == "" || !slices.Contains(v.Providers, testProvider) {
		t.Errorf("version = %+v", v)
	}
}

func TestQuiet(t *testing.T) {
	e := newTestEnv(t)
	r := e.run("cluster", "create", "tr", "-q")
	if r.code != 0 || r.stdout != "tr\n" || r.stderr != "" {
		t.Errorf("cluster create -q: %+v", r)
	}
	if r := e.run("cluster", "list", "-q"); r.stdout != "tr\n" {
		t.Errorf("cluster list -q: %+v", r)
	}
	r = e.run("create", "web", "-q")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || !strings.HasPrefix(id, "i-") || r.stderr != "" {
		t.Errorf("create -q: %+v (the SSH note must be quiet too)", r)
	}
	if len(e.fake.Rules()) != 1 {
		t.Errorf("create -q still adds the default SSH rule: rules %+v", e.fake.Rules())
	}
	r = e.run("firewall", "add", "web", "tcp:80 from 10.0.0.0/8", "-q")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "fw-") || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("firewall add -q: %+v", r)
	}
	r = e.run("firewall", "list", "web", "-q")
	if r.code != 0 || strings.Count(r.stdout, "fw-") != 2 || strings.Contains(r.stdout, "TARGET") {
		t.Errorf("firewall list -q: %+v", r)
	}
	r = e.run("delete", "web", "-q")
	if r.code != 0 || r.stdout != "" {
		t.Errorf("delete -q: %+v", r)
	}
}
