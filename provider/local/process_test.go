package local

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
)

// TestHelperProcessCreate is not a test: TestCrossProcess runs the test
// binary with it selected to create an instance from another process.
func TestHelperProcessCreate(t *testing.T) {
	root := os.Getenv("LOCAL_HELPER_ROOT")
	if root == "" {
		return // only meaningful as TestCrossProcess's child
	}
	ctx := context.Background()
	p, err := New(ctx, Config{Root: root, Prefix: testPrefix, Pool: testPool, MasterKeyFile: os.Getenv("LOCAL_HELPER_KEY")})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	inst, err := p.CreateInstance(ctx, compute.InstanceSpec{
		Name: os.Getenv("LOCAL_HELPER_NAME"), RefID: "cross-process", SSHKeys: []string{os.Getenv("LOCAL_HELPER_SSHKEY")},
		Rules: []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: mustCallerPrefixes(p)}},
	})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("ID", inst.ID)
	os.Exit(0) // the instance must outlive this process
}

func mustCallerPrefixes(p *Provider) []netip.Prefix {
	cp, _ := p.CallerPrefixes(context.Background())
	return cp
}

// TestCrossProcess: five processes create with one RefID at once and get
// one instance (the file lock and the RefID index work across processes),
// and the instance keeps running after every creating process has exited.
func TestCrossProcess(t *testing.T) {
	p := newTestProvider(t)
	key := newTestKey(t)
	var wg sync.WaitGroup
	ids := make([]string, 5)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcessCreate$", "-test.count=1")
			cmd.Env = append(os.Environ(), "LOCAL_HELPER_ROOT="+p.cfg.Root, "LOCAL_HELPER_KEY="+p.cfg.MasterKeyFile,
				fmt.Sprintf("LOCAL_HELPER_NAME=xp%d", i), "LOCAL_HELPER_SSHKEY="+key.auth)
			out, _ := cmd.CombinedOutput()
			for _, l := range strings.Split(string(out), "\n") {
				if id, ok := strings.CutPrefix(l, "ID "); ok {
					ids[i] = id
				}
			}
			if ids[i] == "" {
				t.Errorf("process %d: %s", i, out)
			}
		}()
	}
	wg.Wait()
	for i := range ids {
		if ids[i] != ids[0] {
			t.Fatalf("processes got different instances: %v", ids)
		}
	}
	insts, _ := p.ListInstances(context.Background(), compute.ListOptions{})
	if len(insts) != 1 {
		t.Fatalf("%d instances", len(insts))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	inst, err := compute.Wait(ctx, p, ids[0], compute.StatusRunning)
	if err != nil {
		t.Fatal(err)
	}
	c := mustSSH(t, inst, key)
	run(t, c, "true")
}
