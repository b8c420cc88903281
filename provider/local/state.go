package local

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/provider/local/internal/nspawn"
)

// Record states. They are what the provider last did; GetInstance derives
// the reported compute.Status from them and from the live process.
const (
	statePending     = "pending"     // being created
	stateBooting     = "booting"     // launched, sshd not seen yet
	stateRunning     = "running"     // launched and sshd accepted once
	stateStopped     = "stopped"     // stopped on request, disk kept
	stateTerminating = "terminating" // being torn down
	stateFailed      = "failed"      // a start failed; StatusReason says why
)

// instanceRecord is what the provider keeps about one instance, in
// Root/state/instances/<id>.json.
type instanceRecord struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	RefID     string            `json:"refId,omitempty"`
	Key       string            `json:"key"` // idempotency key (RefID or Name)
	Cluster   string            `json:"cluster,omitempty"`
	Image     string            `json:"image"`
	Type      string            `json:"type"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"createdAt"`

	State        string `json:"state"`
	StatusReason string `json:"statusReason,omitempty"`
	// Creator is the process creating the instance while State is
	// pending: GC removes pending instances whose creator died.
	Creator nspawn.Process `json:"creator"`

	Bridge  string       `json:"bridge"`
	Subnet  netip.Prefix `json:"subnet"`
	Addr    netip.Addr   `json:"addr"`
	MAC     string       `json:"mac"`
	UIDBase uint32       `json:"uidBase,omitempty"` // 0: no user namespace

	WrappedKey []byte          `json:"wrappedKey,omitempty"` // instance key sealed by the master key
	SSHKeys    []string        `json:"sshKeys"`
	HostKey    compute.HostKey `json:"hostKey"`

	Proc        nspawn.Process `json:"proc"`
	CgroupPaths []string       `json:"cgroupPaths,omitempty"`
}

// clusterRecord is kept in Root/state/clusters/<name>.json.
type clusterRecord struct {
	Name      string            `json:"name"`
	ID        string            `json:"id"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"createdAt"`
	Subnet    netip.Prefix      `json:"subnet"`
	Bridge    string            `json:"bridge"`
}

// store is the on-disk state under Root/state. Mutations happen under the
// provider's lock; reads may happen without it because every file is
// replaced atomically.
type store struct {
	dir string
}

func (s *store) path(kind, name string) string {
	return filepath.Join(s.dir, kind, name+".json")
}

func (s *store) init() error {
	for _, k := range []string{"instances", "clusters", "rules", "refs"} {
		if err := os.MkdirAll(filepath.Join(s.dir, k), 0o700); err != nil {
			return fmt.Errorf("local: state: %w", err)
		}
	}
	return nil
}

func (s *store) write(kind, name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	p := s.path(kind, name)
	f, err := os.CreateTemp(filepath.Dir(p), "."+name+".tmp-")
	if err != nil {
		return fmt.Errorf("local: state: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("local: state: %w", err)
	}
	return nil
}

func (s *store) read(kind, name string, v any) error {
	b, err := os.ReadFile(s.path(kind, name))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s %q: %w", strings.TrimSuffix(kind, "s"), name, compute.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("local: state: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("local: state %s/%s: %w", kind, name, err)
	}
	return nil
}

func (s *store) remove(kind, name string) error {
	if err := os.Remove(s.path(kind, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local: state: %w", err)
	}
	return nil
}

func (s *store) names(kind string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, kind))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("local: state: %w", err)
	}
	var out []string
	for _, e := range ents {
		n, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && !strings.HasPrefix(n, ".") {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

func (s *store) instance(id string) (*instanceRecord, error) {
	var r instanceRecord
	if err := s.read("instances", id, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func (s *store) instances() ([]*instanceRecord, error) {
	names, err := s.names("instances")
	if err != nil {
		return nil, err
	}
	var out []*instanceRecord
	for _, n := range names {
		r, err := s.instance(n)
		if errors.Is(err, compute.ErrNotFound) {
			continue // removed while we listed
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (s *store) cluster(name string) (*clusterRecord, error) {
	var r clusterRecord
	if err := s.read("clusters", name, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func (s *store) clusters() ([]*clusterRecord, error) {
	names, err := s.names("clusters")
	if err != nil {
		return nil, err
	}
	var out []*clusterRecord
	for _, n := range names {
		r, err := s.cluster(n)
		if errors.Is(err, compute.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// refName is the file name of an idempotency key's index entry.
func refName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
}

type refRecord struct {
	Key string `json:"key"`
	ID  string `json:"id"`
}

// rulesName is the rule file of a target.
func rulesName(t compute.Target) string {
	return string(t.Kind) + "_" + t.Name
}

func (s *store) rules(t compute.Target) ([]compute.FirewallRule, error) {
	var rs []compute.FirewallRule
	err := s.read("rules", rulesName(t), &rs)
	if errors.Is(err, compute.ErrNotFound) {
		return nil, nil
	}
	return rs, err
}

func (s *store) setRules(t compute.Target, rs []compute.FirewallRule) error {
	if len(rs) == 0 {
		return s.remove("rules", rulesName(t))
	}
	return s.write("rules", rulesName(t), rs)
}

// allRules returns every stored rule, of every target.
func (s *store) allRules() ([]compute.FirewallRule, error) {
	names, err := s.names("rules")
	if err != nil {
		return nil, err
	}
	var out []compute.FirewallRule
	for _, n := range names {
		var rs []compute.FirewallRule
		if err := s.read("rules", n, &rs); err != nil {
			if errors.Is(err, compute.ErrNotFound) {
				continue
			}
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

// fileLock is the provider's global lock: an in-process mutex (flock does
// not exclude goroutines sharing one open file) plus an flock on Root/lock
// that excludes other processes.
type fileLock struct {
	path string
	mu   chan struct{}
}

func newFileLock(path string) *fileLock {
	return &fileLock{path: path, mu: make(chan struct{}, 1)}
}

// lock takes the lock and returns its release func.
func (l *fileLock) lock() (func(), error) {
	l.mu <- struct{}{}
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		<-l.mu
		return nil, fmt.Errorf("local: lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		<-l.mu
		return nil, fmt.Errorf("local: lock: %w", err)
	}
	return func() {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
		<-l.mu
	}, nil
}
