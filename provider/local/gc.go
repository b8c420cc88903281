package local

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/provider/local/internal/cgroups"
	"github.com/compute-sdk/compute/provider/local/internal/encfs"
	"github.com/compute-sdk/compute/provider/local/internal/nspawn"
)

var instanceIDRE = regexp.MustCompile(`^i-[0-9a-f]{8}$`)

// GC removes every object of this provider's prefix and root whose instance
// record is gone, and instances whose creation was interrupted (a pending
// record whose creating process died). It returns what it removed.
func (p *Provider) GC(ctx context.Context) (compute.GCReport, error) {
	var rep compute.GCReport
	var errs []error

	// Interrupted creations: tear them down like a terminate.
	recs, err := p.st.instances()
	if err != nil {
		return rep, err
	}
	for _, r := range recs {
		if r.State == statePending && !r.Creator.Alive() {
			if err := p.destroy(ctx, r); err != nil {
				errs = append(errs, err)
			} else {
				rep.Removed = append(rep.Removed, "instance "+r.ID+" (interrupted create)")
			}
		}
	}

	unlock, err := p.lk.lock()
	if err != nil {
		return rep, err
	}
	defer unlock()
	known := map[string]*instanceRecord{}
	bridges := map[string]bool{}
	if recs, err = p.st.instances(); err != nil {
		return rep, err
	}
	for _, r := range recs {
		known[r.ID] = r
		bridges[r.Bridge] = true
	}
	clusters, err := p.st.clusters()
	if err != nil {
		return rep, err
	}
	for _, c := range clusters {
		bridges[c.Bridge] = true
	}

	// Processes and cgroups first (they hold namespaces and mounts).
	groups, err := cgroups.List(p.cgPrefix)
	if err != nil {
		errs = append(errs, err)
	}
	for _, g := range groups {
		if _, ok := known[g]; ok {
			continue
		}
		if err := removeCgroup(p.cgPrefix, g, nil); err != nil {
			errs = append(errs, err)
		} else {
			rep.Removed = append(rep.Removed, "cgroup "+p.cgPrefix+"/"+g)
		}
	}
	for _, f := range nspawn.Leftovers(p.cfg.Prefix + "-i-") {
		id := strings.TrimPrefix(filepath.Base(f), p.cfg.Prefix+"-")
		if _, ok := known[id]; ok {
			continue
		}
		if err := os.RemoveAll(f); err != nil {
			errs = append(errs, err)
		} else {
			rep.Removed = append(rep.Removed, "nspawn run file "+f)
		}
	}
	// Network attachments and bridges.
	ids, err := p.net.Instances(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, h := range ids {
		if _, ok := known["i-"+h]; ok {
			continue
		}
		if err := p.net.DetachInstance(ctx, h); err != nil {
			errs = append(errs, err)
		} else {
			rep.Removed = append(rep.Removed, "network i-"+h)
		}
		p.st.setRules(compute.InstanceTarget("i-"+h), nil)
	}
	brs, err := p.net.Bridges(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, b := range brs {
		if bridges[b] || !strings.HasPrefix(b, p.cfg.Prefix+"b") {
			continue
		}
		if err := p.net.DeleteBridge(ctx, b); err != nil {
			errs = append(errs, err)
		} else {
			rep.Removed = append(rep.Removed, "bridge "+b)
		}
	}
	// Instance directories: mounts, volumes (and their loop devices).
	ents, _ := os.ReadDir(p.instancesDir())
	for _, e := range ents {
		if _, ok := known[e.Name()]; ok || !instanceIDRE.MatchString(e.Name()) {
			continue
		}
		if err := p.removeFiles(ctx, e.Name()); err != nil {
			errs = append(errs, err)
		} else {
			rep.Removed = append(rep.Removed, "directory "+p.instDir(e.Name()))
		}
	}
	// Loop devices whose instance directory is already gone (a crash
	// between attaching and mounting a volume).
	if loops, err := encfs.LoopsFor(p.instancesDir()); err == nil {
		for _, l := range loops {
			b, err := os.ReadFile("/sys/block/" + filepath.Base(l) + "/loop/backing_file")
			if err != nil {
				continue
			}
			backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
			id := filepath.Base(filepath.Dir(backing))
			if _, ok := known[id]; ok || !instanceIDRE.MatchString(id) {
				continue
			}
			if err := encfs.Destroy(ctx, backing, filepath.Join(filepath.Dir(backing), "vol")); err != nil {
				errs = append(errs, err)
			} else {
				rep.Removed = append(rep.Removed, "loop "+l)
			}
		}
	}
	// Rule files of targets that are gone.
	names, _ := p.st.names("rules")
	for _, n := range names {
		kind, name, _ := strings.Cut(n, "_")
		gone := false
		switch compute.TargetKind(kind) {
		case compute.TargetInstance:
			_, ok := known[name]
			gone = !ok
		case compute.TargetCluster:
			_, err := p.st.cluster(name)
			gone = errors.Is(err, compute.ErrNotFound)
		}
		if gone {
			p.st.remove("rules", n)
			rep.Removed = append(rep.Removed, "rules "+n)
		}
	}
	// Index entries of instances that are gone.
	refs, _ := p.st.names("refs")
	for _, n := range refs {
		var ref refRecord
		if err := p.st.read("refs", n, &ref); err == nil {
			if _, ok := known[ref.ID]; !ok {
				p.st.remove("refs", n)
			}
		}
	}
	sort.Strings(rep.Removed)
	return rep, errors.Join(errs...)
}

// Inventory lists every low-level object the provider owns: network
// objects, mounts and loop devices under Root, cgroups, nspawn run files and
// instance directories.
func (p *Provider) Inventory(ctx context.Context) ([]string, error) {
	out, err := p.net.Objects(ctx)
	if err != nil {
		return nil, err
	}
	// The router, its host link and tables exist as long as the provider
	// does; they belong to no instance.
	root, err := filepath.EvalSymlinks(p.cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	mounts, err := mountsUnder(root)
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		if m == filepath.Join(root, "instances") {
			continue // the provider's shared-propagation mount (see ensureSharedMount)
		}
		out = append(out, "mount "+m)
	}
	loops, err := encfs.LoopsFor(root)
	if err != nil {
		return nil, err
	}
	for _, l := range loops {
		out = append(out, "loop "+l)
	}
	groups, err := cgroups.List(p.cgPrefix)
	if err != nil {
		return nil, err
	}
	for _, g := range groups {
		out = append(out, "cgroup "+p.cgPrefix+"/"+g)
	}
	for _, f := range nspawn.Leftovers(p.cfg.Prefix + "-i-") {
		out = append(out, "nspawn "+f)
	}
	ents, _ := os.ReadDir(p.instancesDir())
	for _, e := range ents {
		out = append(out, "directory "+filepath.Join(p.instancesDir(), e.Name()))
	}
	recs, err := p.st.instances()
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		if r.Proc.Alive() {
			out = append(out, fmt.Sprintf("process %d (%s)", r.Proc.PID, r.ID))
		}
	}
	sort.Strings(out)
	return out, nil
}

// mountsUnder lists mount points at or below dir (from this process's
// mount namespace).
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}
