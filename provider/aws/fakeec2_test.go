package aws

import (
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeEC2 is an in-memory EC2 Query API for wire-level tests: the real
// ec2.Client talks to it over HTTP. It parses each form-encoded request,
// keeps the state the provider uses (security groups, their rules with
// tags, instances, images, console output), enforces the API rules the
// provider relies on (duplicates, quotas, dependencies, client tokens) and
// answers with XML shaped like the EC2 API reference's examples.
type fakeEC2 struct {
	t  *testing.T
	mu sync.Mutex

	vpc       string
	groups    map[string]*fGroup
	rules     map[string]*fRule
	instances map[string]*fInstance
	images    map[string]fImage
	tokens    map[string]string // client token -> instance ID
	console   map[string]string // instance ID -> console text
	seq       int

	calls []fCall
	// fail queues error codes per action, returned before the action runs.
	fail map[string][]string
	// depViolations is how many DeleteSecurityGroup attempts per group fail
	// with DependencyViolation after its instance terminated (the network
	// interface is still being released).
	depViolations int
	depLeft       map[string]int
	// shutdownPolls is how many DescribeInstances calls an instance stays
	// shutting-down after TerminateInstances.
	shutdownPolls int
}

type fCall struct {
	Action string
	Params url.Values
}

type fGroup struct {
	ID, Name, Desc, VPC string
	Tags                map[string]string
}

type fRule struct {
	ID, Group                    string
	Egress                       bool
	Proto                        string
	From, To                     int32
	CIDR4, CIDR6, RefGroup, Desc string
	Tags                         map[string]string
}

type fInstance struct {
	ID, Image, Type, State, Token, Subnet string
	Tags                                  map[string]string
	Groups                                []string
	Launch                                time.Time
	polls                                 int
	PrivateIP                             string
}

type fImage struct {
	ID, RootDevice, RootType string
	Mappings                 []fMapping
}

type fMapping struct{ Device, Snapshot, Virtual string }

const fakeDefaultGroup = "sg-0default0000000"

func newFakeEC2(t *testing.T) *fakeEC2 {
	f := &fakeEC2{
		t:         t,
		vpc:       "vpc-0a1b2c3d",
		groups:    map[string]*fGroup{},
		rules:     map[string]*fRule{},
		instances: map[string]*fInstance{},
		tokens:    map[string]string{},
		console:   map[string]string{},
		fail:      map[string][]string{},
		depLeft:   map[string]int{},
		images: map[string]fImage{
			"ami-0debian12": {ID: "ami-0debian12", RootDevice: "/dev/xvda", RootType: "ebs",
				Mappings: []fMapping{{Device: "/dev/xvda", Snapshot: "snap-0root"}, {Device: "/dev/sdb", Virtual: "ephemeral0"}}},
			"ami-0instancestore": {ID: "ami-0instancestore", RootDevice: "/dev/sda1", RootType: "instance-store"},
		},
	}
	// Every VPC has a default group; tests check it is never attached.
	f.groups[fakeDefaultGroup] = &fGroup{ID: fakeDefaultGroup, Name: "default", Desc: "default VPC security group", VPC: f.vpc, Tags: map[string]string{}}
	f.addRule(&fRule{Group: fakeDefaultGroup, Proto: "-1", From: -1, To: -1, RefGroup: fakeDefaultGroup, Tags: map[string]string{}})
	return f
}

func (f *fakeEC2) nextID(prefix string) string {
	f.seq++
	return fmt.Sprintf("%s-%017x", prefix, f.seq)
}

func (f *fakeEC2) addRule(r *fRule) *fRule {
	r.ID = f.nextID("sgr")
	f.rules[r.ID] = r
	return r
}

// failNext makes the next calls of action fail with the given codes.
func (f *fakeEC2) failNext(action string, codes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[action] = append(f.fail[action], codes...)
}

// callsOf returns the recorded calls of action.
func (f *fakeEC2) callsOf(action string) []fCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fCall
	for _, c := range f.calls {
		if c.Action == action {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeEC2) resetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// writes counts requests that change state.
func (f *fakeEC2) writes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if !strings.HasPrefix(c.Action, "Describe") && c.Action != "GetConsoleOutput" {
			out = append(out, c.Action)
		}
	}
	return out
}

type apiErr struct {
	code, msg string
}

func (f *fakeEC2) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	q := r.PostForm
	action := q.Get("Action")
	if q.Get("Version") != "2016-11-15" {
		f.t.Errorf("%s: Version = %q", action, q.Get("Version"))
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		f.t.Errorf("%s: request is not SigV4-signed", action)
	}
	f.mu.Lock()
	f.calls = append(f.calls, fCall{Action: action, Params: q})
	if codes := f.fail[action]; len(codes) > 0 {
		f.fail[action] = codes[1:]
		f.mu.Unlock()
		writeErr(w, apiErr{codes[0], "injected by the test"})
		return
	}
	body, aerr := f.handle(action, q)
	f.mu.Unlock()
	if aerr != nil {
		writeErr(w, *aerr)
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<%sResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>%s</%sResponse>`, action, body, action)
}

func writeErr(w http.ResponseWriter, e apiErr) {
	status := http.StatusBadRequest
	switch e.code {
	case "RequestLimitExceeded", "Unavailable", "ServiceUnavailable":
		status = http.StatusServiceUnavailable
	case "InternalError":
		status = http.StatusInternalServerError
	case "UnauthorizedOperation":
		status = http.StatusForbidden
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors><RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>`, esc(e.code), esc(e.msg))
}

func esc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

func el(name, v string) string { return "<" + name + ">" + esc(v) + "</" + name + ">" }

// list reads Prefix.1, Prefix.2, ...
func list(q url.Values, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := q[prefix+"."+strconv.Itoa(i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

// filters reads Filter.N.Name / Filter.N.Value.M.
func filters(q url.Values) map[string][]string {
	m := map[string][]string{}
	for i := 1; ; i++ {
		p := "Filter." + strconv.Itoa(i)
		name := q.Get(p + ".Name")
		if name == "" {
			return m
		}
		m[name] = list(q, p+".Value")
	}
}

// tagPairs reads Prefix.N.Key / Prefix.N.Value.
func tagPairs(q url.Values, prefix string) map[string]string {
	m := map[string]string{}
	for i := 1; ; i++ {
		p := prefix + "." + strconv.Itoa(i)
		k, ok := q[p+".Key"]
		if !ok {
			return m
		}
		m[k[0]] = q.Get(p + ".Value")
	}
}

// tagSpecs reads TagSpecification.N by resource type.
func tagSpecs(q url.Values) map[string]map[string]string {
	m := map[string]map[string]string{}
	for i := 1; ; i++ {
		p := "TagSpecification." + strconv.Itoa(i)
		rt := q.Get(p + ".ResourceType")
		if rt == "" {
			return m
		}
		m[rt] = tagPairs(q, p+".Tag")
	}
}

func tagsMatch(tags map[string]string, fs map[string][]string) bool {
	for name, vals := range fs {
		k, ok := strings.CutPrefix(name, "tag:")
		if !ok {
			continue
		}
		v, has := tags[k]
		if !has || !slices.Contains(vals, v) {
			return false
		}
	}
	return true
}

func tagSet(tags map[string]string) string {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("<tagSet>")
	for _, k := range keys {
		b.WriteString("<item>" + el("key", k) + el("value", tags[k]) + "</item>")
	}
	b.WriteString("</tagSet>")
	return b.String()
}

func copyTags(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (f *fakeEC2) handle(action string, q url.Values) (string, *apiErr) {
	switch action {
	case "DescribeSecurityGroups":
		return f.describeGroups(q)
	case "CreateSecurityGroup":
		return f.createGroup(q)
	case "DeleteSecurityGroup":
		return f.deleteGroup(q)
	case "AuthorizeSecurityGroupIngress":
		return f.authorize(q, false)
	case "AuthorizeSecurityGroupEgress":
		return f.authorize(q, true)
	case "RevokeSecurityGroupIngress":
		return f.revoke(q)
	case "DescribeSecurityGroupRules":
		return f.describeRules(q)
	case "CreateTags", "DeleteTags":
		return f.tags(action, q)
	case "DescribeImages":
		return f.describeImages(q)
	case "RunInstances":
		return f.run(q)
	case "DescribeInstances":
		return f.describeInstances(q)
	case "TerminateInstances", "StopInstances", "StartInstances":
		return f.transition(action, q)
	case "RebootInstances":
		for _, id := range list(q, "InstanceId") {
			if f.instances[id] == nil {
				return "", &apiErr{"InvalidInstanceID.NotFound", "The instance ID '" + id + "' does not exist"}
			}
		}
		return "<return>true</return>", nil
	case "GetConsoleOutput":
		id := q.Get("InstanceId")
		if f.instances[id] == nil {
			return "", &apiErr{"InvalidInstanceID.NotFound", "The instance ID '" + id + "' does not exist"}
		}
		return el("instanceId", id) + el("timestamp", "2026-12-04T12:00:00.000Z") +
			el("output", base64.StdEncoding.EncodeToString([]byte(f.console[id]))), nil
	}
	f.t.Errorf("fake EC2: unexpected action %s %v", action, q)
	return "", &apiErr{"InvalidAction", "The action " + action + " is not valid for this web service."}
}

func (f *fakeEC2) groupXML(g *fGroup) string {
	return "<item>" + el("ownerId", "123456789012") + el("groupId", g.ID) + el("groupName", g.Name) +
		el("groupDescription", g.Desc) + el("vpcId", g.VPC) + "<ipPermissions/><ipPermissionsEgress/>" + tagSet(g.Tags) + "</item>"
}

func (f *fakeEC2) describeGroups(q url.Values) (string, *apiErr) {
	fs := filters(q)
	ids := list(q, "GroupId")
	for _, id := range ids {
		if f.groups[id] == nil {
			return "", &apiErr{"InvalidGroup.NotFound", "The security group '" + id + "' does not exist"}
		}
	}
	var keys []string
	for id := range f.groups {
		keys = append(keys, id)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("<securityGroupInfo>")
	for _, id := range keys {
		g := f.groups[id]
		if len(ids) > 0 && !slices.Contains(ids, id) {
			continue
		}
		if v, ok := fs["group-name"]; ok && !slices.Contains(v, g.Name) {
			continue
		}
		if v, ok := fs["group-id"]; ok && !slices.Contains(v, g.ID) {
			continue
		}
		if v, ok := fs["vpc-id"]; ok && !slices.Contains(v, g.VPC) {
			continue
		}
		if v, ok := fs["ip-permission.group-id"]; ok {
			found := false
			for _, r := range f.rules {
				if r.Group == g.ID && !r.Egress && slices.Contains(v, r.RefGroup) {
					found = true
				}
			}
			if !found {
				continue
			}
		}
		if !tagsMatch(g.Tags, fs) {
			continue
		}
		b.WriteString(f.groupXML(g))
	}
	b.WriteString("</securityGroupInfo>")
	return b.String(), nil
}

func (f *fakeEC2) createGroup(q url.Values) (string, *apiErr) {
	name, desc := q.Get("GroupName"), q.Get("GroupDescription")
	if name == "" || desc == "" {
		return "", &apiErr{"MissingParameter", "GroupName and GroupDescription are required"}
	}
	if strings.HasPrefix(strings.ToLower(name), "sg-") || name == "default" {
		return "", &apiErr{"InvalidParameterValue", "invalid group name " + name}
	}
	vpc := q.Get("VpcId")
	if vpc == "" {
		vpc = f.vpc
	}
	for _, g := range f.groups {
		if g.Name == name && g.VPC == vpc {
			return "", &apiErr{"InvalidGroup.Duplicate", "The security group '" + name + "' already exists for VPC '" + vpc + "'"}
		}
	}
	g := &fGroup{ID: f.nextID("sg"), Name: name, Desc: desc, VPC: vpc, Tags: copyTags(tagSpecs(q)["security-group"])}
	f.groups[g.ID] = g
	// Like EC2: a new VPC group allows all IPv4 egress, and nothing in.
	f.addRule(&fRule{Group: g.ID, Egress: true, Proto: "-1", From: -1, To: -1, CIDR4: "0.0.0.0/0", Tags: map[string]string{}})
	return "<return>true</return>" + el("groupId", g.ID) + tagSet(g.Tags), nil
}

func (f *fakeEC2) deleteGroup(q url.Values) (string, *apiErr) {
	id := q.Get("GroupId")
	g := f.groups[id]
	if g == nil {
		return "", &apiErr{"InvalidGroup.NotFound", "The security group '" + id + "' does not exist"}
	}
	for _, in := range f.instances {
		if slices.Contains(in.Groups, id) && in.State != "terminated" {
			return "", &apiErr{"DependencyViolation", "resource " + id + " has a dependent object"}
		}
	}
	for _, r := range f.rules {
		if r.RefGroup == id && r.Group != id {
			return "", &apiErr{"DependencyViolation", "resource " + id + " has a dependent object"}
		}
	}
	used := false
	for _, in := range f.instances {
		used = used || slices.Contains(in.Groups, id)
	}
	if used {
		left, ok := f.depLeft[id]
		if !ok {
			left = f.depViolations
		}
		if left > 0 {
			f.depLeft[id] = left - 1
			return "", &apiErr{"DependencyViolation", "resource " + id + " has a dependent object"}
		}
	}
	delete(f.groups, id)
	for rid, r := range f.rules {
		if r.Group == id {
			delete(f.rules, rid)
		}
	}
	return "<return>true</return>" + el("groupId", id), nil
}

// perms reads IpPermissions.N into one rule per source, as EC2 does.
func (f *fakeEC2) perms(q url.Values, groupID string) ([]*fRule, *apiErr) {
	var out []*fRule
	for i := 1; ; i++ {
		p := "IpPermissions." + strconv.Itoa(i)
		proto, ok := q[p+".IpProtocol"]
		if !ok {
			break
		}
		r := fRule{Group: groupID, Proto: proto[0], From: -1, To: -1}
		switch r.Proto {
		case "tcp", "udp", "icmp", "58":
			from, err1 := strconv.Atoi(q.Get(p + ".FromPort"))
			to, err2 := strconv.Atoi(q.Get(p + ".ToPort"))
			if err1 != nil || err2 != nil {
				return nil, &apiErr{"MissingParameter", "FromPort and ToPort are required for " + r.Proto}
			}
			r.From, r.To = int32(from), int32(to)
			if (r.Proto == "tcp" || r.Proto == "udp") && (from < 0 || to > 65535 || from > to) {
				return nil, &apiErr{"InvalidParameterValue", "invalid port range"}
			}
		case "-1":
		default:
			return nil, &apiErr{"InvalidParameterValue", "Invalid IP protocol " + r.Proto}
		}
		n := 0
		for j := 1; q.Has(fmt.Sprintf("%s.IpRanges.%d.CidrIp", p, j)); j++ {
			rr := r
			rr.CIDR4 = q.Get(fmt.Sprintf("%s.IpRanges.%d.CidrIp", p, j))
			rr.Desc = q.Get(fmt.Sprintf("%s.IpRanges.%d.Description", p, j))
			out = append(out, &rr)
			n++
		}
		for j := 1; q.Has(fmt.Sprintf("%s.Ipv6Ranges.%d.CidrIpv6", p, j)); j++ {
			rr := r
			rr.CIDR6 = q.Get(fmt.Sprintf("%s.Ipv6Ranges.%d.CidrIpv6", p, j))
			rr.Desc = q.Get(fmt.Sprintf("%s.Ipv6Ranges.%d.Description", p, j))
			out = append(out, &rr)
			n++
		}
		for j := 1; q.Has(fmt.Sprintf("%s.Groups.%d.GroupId", p, j)); j++ {
			rr := r
			rr.RefGroup = q.Get(fmt.Sprintf("%s.Groups.%d.GroupId", p, j))
			rr.Desc = q.Get(fmt.Sprintf("%s.Groups.%d.Description", p, j))
			if f.groups[rr.RefGroup] == nil {
				return nil, &apiErr{"InvalidGroup.NotFound", "The security group '" + rr.RefGroup + "' does not exist"}
			}
			out = append(out, &rr)
			n++
		}
		if n == 0 {
			return nil, &apiErr{"InvalidParameterValue", "a permission needs a source"}
		}
	}
	for _, r := range out {
		for _, c := range []string{r.CIDR4, r.CIDR6} {
			if c == "" {
				continue
			}
			pfx, err := netip.ParsePrefix(c)
			if err != nil || pfx != pfx.Masked() || (c == r.CIDR4) != pfx.Addr().Is4() {
				return nil, &apiErr{"InvalidParameterValue", "CIDR block " + c + " is malformed"}
			}
		}
	}
	if len(out) == 0 {
		return nil, &apiErr{"MissingParameter", "IpPermissions is required"}
	}
	return out, nil
}

func (r *fRule) key() string {
	return fmt.Sprintf("%t|%s|%d|%d|%s|%s|%s", r.Egress, r.Proto, r.From, r.To, r.CIDR4, r.CIDR6, r.RefGroup)
}

func (f *fakeEC2) ruleXML(r *fRule) string {
	var b strings.Builder
	b.WriteString("<item>" + el("securityGroupRuleId", r.ID) + el("groupId", r.Group) + el("groupOwnerId", "123456789012") +
		el("isEgress", strconv.FormatBool(r.Egress)) + el("ipProtocol", r.Proto) +
		el("fromPort", strconv.Itoa(int(r.From))) + el("toPort", strconv.Itoa(int(r.To))))
	switch {
	case r.CIDR4 != "":
		b.WriteString(el("cidrIpv4", r.CIDR4))
	case r.CIDR6 != "":
		b.WriteString(el("cidrIpv6", r.CIDR6))
	case r.RefGroup != "":
		b.WriteString("<referencedGroupInfo>" + el("groupId", r.RefGroup) + el("userId", "123456789012") + "</referencedGroupInfo>")
	}
	if r.Desc != "" {
		b.WriteString(el("description", r.Desc))
	}
	b.WriteString(tagSet(r.Tags) + "</item>")
	return b.String()
}

func (f *fakeEC2) authorize(q url.Values, egress bool) (string, *apiErr) {
	id := q.Get("GroupId")
	if f.groups[id] == nil {
		return "", &apiErr{"InvalidGroup.NotFound", "The security group '" + id + "' does not exist"}
	}
	rs, aerr := f.perms(q, id)
	if aerr != nil {
		return "", aerr
	}
	specs := tagSpecs(q)
	for rt := range specs {
		if rt != "security-group-rule" {
			return "", &apiErr{"InvalidParameterValue", "tags on " + rt + " are not supported here"}
		}
	}
	have := map[string]bool{}
	count := 0
	for _, r := range f.rules {
		if r.Group == id {
			have[r.key()] = true
			if r.Egress == egress {
				count++
			}
		}
	}
	for _, r := range rs {
		r.Egress = egress
		if have[r.key()] {
			return "", &apiErr{"InvalidPermission.Duplicate", "the specified rule already exists"}
		}
		have[r.key()] = true
	}
	if count+len(rs) > 60 {
		return "", &apiErr{"RulesPerSecurityGroupLimitExceeded", "The maximum number of rules per security group has been reached."}
	}
	var b strings.Builder
	b.WriteString("<return>true</return><securityGroupRuleSet>")
	for _, r := range rs {
		r.Tags = copyTags(specs["security-group-rule"])
		f.addRule(r)
		b.WriteString(f.ruleXML(r))
	}
	b.WriteString("</securityGroupRuleSet>")
	return b.String(), nil
}

func (f *fakeEC2) revoke(q url.Values) (string, *apiErr) {
	id := q.Get("GroupId")
	if f.groups[id] == nil {
		return "", &apiErr{"InvalidGroup.NotFound", "The security group '" + id + "' does not exist"}
	}
	ids := list(q, "SecurityGroupRuleId")
	if len(ids) == 0 {
		f.t.Errorf("RevokeSecurityGroupIngress without SecurityGroupRuleId: %v", q)
		return "", &apiErr{"MissingParameter", "SecurityGroupRuleId"}
	}
	for _, rid := range ids {
		r := f.rules[rid]
		if r == nil || r.Group != id || r.Egress {
			return "", &apiErr{"InvalidSecurityGroupRuleId.NotFound", "The security group rule ID '" + rid + "' does not exist"}
		}
	}
	for _, rid := range ids {
		delete(f.rules, rid)
	}
	return "<return>true</return>", nil
}

func (f *fakeEC2) describeRules(q url.Values) (string, *apiErr) {
	fs := filters(q)
	var keys []string
	for id := range f.rules {
		keys = append(keys, id)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("<securityGroupRuleSet>")
	for _, id := range keys {
		r := f.rules[id]
		if v, ok := fs["group-id"]; ok && !slices.Contains(v, r.Group) {
			continue
		}
		if !tagsMatch(r.Tags, fs) {
			continue
		}
		b.WriteString(f.ruleXML(r))
	}
	b.WriteString("</securityGroupRuleSet>")
	return b.String(), nil
}

func (f *fakeEC2) tags(action string, q url.Values) (string, *apiErr) {
	tags := tagPairs(q, "Tag")
	for _, id := range list(q, "ResourceId") {
		var m map[string]string
		switch {
		case f.groups[id] != nil:
			m = f.groups[id].Tags
		case f.rules[id] != nil:
			m = f.rules[id].Tags
		case f.instances[id] != nil:
			m = f.instances[id].Tags
		default:
			return "", &apiErr{"InvalidID", "The ID '" + id + "' is not valid"}
		}
		for k, v := range tags {
			if action == "CreateTags" {
				if len(v) > 256 || len(k) > 128 {
					return "", &apiErr{"InvalidParameterValue", "tag too long"}
				}
				m[k] = v
			} else {
				delete(m, k)
			}
		}
		if len(m) > 50 {
			return "", &apiErr{"TagLimitExceeded", "too many tags"}
		}
	}
	return "<return>true</return>", nil
}

func (f *fakeEC2) describeImages(q url.Values) (string, *apiErr) {
	var b strings.Builder
	b.WriteString("<imagesSet>")
	for _, id := range list(q, "ImageId") {
		img, ok := f.images[id]
		if !ok {
			return "", &apiErr{"InvalidAMIID.NotFound", "The image id '[" + id + "]' does not exist"}
		}
		b.WriteString("<item>" + el("imageId", img.ID) + el("imageState", "available") + el("rootDeviceType", img.RootType) +
			el("rootDeviceName", img.RootDevice) + "<blockDeviceMapping>")
		for _, m := range img.Mappings {
			b.WriteString("<item>" + el("deviceName", m.Device))
			if m.Virtual != "" {
				b.WriteString(el("virtualName", m.Virtual))
			} else {
				b.WriteString("<ebs>" + el("snapshotId", m.Snapshot) + el("volumeSize", "8") +
					el("deleteOnTermination", "true") + el("volumeType", "gp3") + el("encrypted", "false") + "</ebs>")
			}
			b.WriteString("</item>")
		}
		b.WriteString("</blockDeviceMapping></item>")
	}
	b.WriteString("</imagesSet>")
	return b.String(), nil
}

var stateCodes = map[string]string{"pending": "0", "running": "16", "shutting-down": "32", "terminated": "48", "stopping": "64", "stopped": "80"}

func (f *fakeEC2) instanceXML(in *fInstance) string {
	var b strings.Builder
	b.WriteString("<item>" + el("instanceId", in.ID) + el("imageId", in.Image) +
		"<instanceState>" + el("code", stateCodes[in.State]) + el("name", in.State) + "</instanceState>" +
		el("instanceType", in.Type) + el("launchTime", in.Launch.Format(time.RFC3339)) + el("clientToken", in.Token))
	if in.State != "terminated" {
		b.WriteString(el("privateIpAddress", in.PrivateIP) + el("ipAddress", "203.0.113.7"))
	}
	b.WriteString("<groupSet>")
	for _, g := range in.Groups {
		name := ""
		if f.groups[g] != nil {
			name = f.groups[g].Name
		}
		b.WriteString("<item>" + el("groupId", g) + el("groupName", name) + "</item>")
	}
	b.WriteString("</groupSet>" + tagSet(in.Tags) + "</item>")
	return b.String()
}

func (f *fakeEC2) run(q url.Values) (string, *apiErr) {
	if q.Get("MinCount") == "" || q.Get("MaxCount") == "" || q.Get("ImageId") == "" {
		return "", &apiErr{"MissingParameter", "ImageId, MinCount and MaxCount are required"}
	}
	if tok := q.Get("ClientToken"); tok != "" {
		if id, ok := f.tokens[tok]; ok {
			in := f.instances[id]
			return el("reservationId", "r-1") + el("ownerId", "123456789012") + "<instancesSet>" + f.instanceXML(in) + "</instancesSet>", nil
		}
	}
	if _, ok := f.images[q.Get("ImageId")]; !ok {
		return "", &apiErr{"InvalidAMIID.NotFound", "The image id does not exist"}
	}
	groups := list(q, "SecurityGroupId")
	if len(groups) == 0 {
		groups = []string{fakeDefaultGroup} // as EC2 does
	}
	for _, g := range groups {
		if f.groups[g] == nil {
			return "", &apiErr{"InvalidGroup.NotFound", "The security group '" + g + "' does not exist"}
		}
	}
	specs := tagSpecs(q)
	in := &fInstance{
		ID: f.nextID("i"), Image: q.Get("ImageId"), Type: q.Get("InstanceType"), State: "pending",
		Token: q.Get("ClientToken"), Subnet: q.Get("SubnetId"), Tags: copyTags(specs["instance"]),
		Groups: groups, Launch: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC), PrivateIP: fmt.Sprintf("10.0.0.%d", 10+len(f.instances)),
	}
	f.instances[in.ID] = in
	if in.Token != "" {
		f.tokens[in.Token] = in.ID
	}
	return el("reservationId", "r-1") + el("ownerId", "123456789012") + "<instancesSet>" + f.instanceXML(in) + "</instancesSet>", nil
}

func (f *fakeEC2) describeInstances(q url.Values) (string, *apiErr) {
	ids := list(q, "InstanceId")
	for _, id := range ids {
		if f.instances[id] == nil {
			return "", &apiErr{"InvalidInstanceID.NotFound", "The instance ID '" + id + "' does not exist"}
		}
	}
	fs := filters(q)
	var keys []string
	for id := range f.instances {
		keys = append(keys, id)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("<reservationSet>")
	for _, id := range keys {
		in := f.instances[id]
		// Time passes one poll at a time.
		switch in.State {
		case "pending":
			in.State = "running"
		case "stopping":
			in.State = "stopped"
		case "shutting-down":
			if in.polls >= f.shutdownPolls {
				in.State = "terminated"
			}
			in.polls++
		}
		if len(ids) > 0 && !slices.Contains(ids, id) {
			continue
		}
		if v, ok := fs["instance-state-name"]; ok && !slices.Contains(v, in.State) {
			continue
		}
		if !tagsMatch(in.Tags, fs) {
			continue
		}
		b.WriteString("<item>" + el("reservationId", "r-"+id[2:]) + el("ownerId", "123456789012") + "<groupSet/><instancesSet>" + f.instanceXML(in) + "</instancesSet></item>")
	}
	b.WriteString("</reservationSet>")
	return b.String(), nil
}

func (f *fakeEC2) transition(action string, q url.Values) (string, *apiErr) {
	ids := list(q, "InstanceId")
	for _, id := range ids {
		if f.instances[id] == nil {
			return "", &apiErr{"InvalidInstanceID.NotFound", "The instance ID '" + id + "' does not exist"}
		}
	}
	var b strings.Builder
	b.WriteString("<instancesSet>")
	for _, id := range ids {
		in := f.instances[id]
		prev := in.State
		switch action {
		case "TerminateInstances":
			if in.State != "terminated" {
				in.State = "shutting-down"
			}
		case "StopInstances":
			if in.State != "running" && in.State != "stopped" {
				return "", &apiErr{"IncorrectInstanceState", "The instance '" + id + "' is not in a state from which it can be stopped."}
			}
			if in.State == "running" {
				in.State = "stopping"
			}
		case "StartInstances":
			if in.State != "stopped" && in.State != "running" {
				return "", &apiErr{"IncorrectInstanceState", "The instance '" + id + "' is not in a state from which it can be started."}
			}
			if in.State == "stopped" {
				in.State = "pending"
			}
		}
		b.WriteString("<item>" + el("instanceId", id) +
			"<currentState>" + el("code", stateCodes[in.State]) + el("name", in.State) + "</currentState>" +
			"<previousState>" + el("code", stateCodes[prev]) + el("name", prev) + "</previousState></item>")
	}
	b.WriteString("</instancesSet>")
	return b.String(), nil
}
