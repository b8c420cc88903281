package local

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/vishvananda/netlink"
)

func TestTeardown(t *testing.T) {
	p := newTestProvider(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "keep"}); err != nil {
		t.Fatal(err)
	}
	if err := p.Teardown(ctx); !errors.Is(err, compute.ErrConflict) {
		t.Fatalf("Teardown with a cluster: got %v, want ErrConflict", err)
	}
	if _, err := os.Stat("/run/netns/" + testPrefix + "-r"); err != nil {
		t.Fatalf("refused Teardown removed the router anyway: %v", err)
	}
	if err := p.DeleteCluster(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	if err := p.Teardown(ctx); err != nil {
		t.Fatalf("Teardown: %v", err)
	}

	if _, err := os.Stat("/run/netns/" + testPrefix + "-r"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("router netns still there: %v", err)
	}
	if _, err := netlink.LinkByName(testPrefix + "-h"); err == nil {
		t.Errorf("host link %s-h still there", testPrefix)
	}
	if out, err := exec.Command("nft", "list", "tables").Output(); err == nil && strings.Contains(string(out), "compute_"+testPrefix+"\n") {
		t.Errorf("host nft table compute_%s still there:\n%s", testPrefix, out)
	}
	for _, h := range []string{"pids", "cpu", "systemd", "unified"} {
		d := "/sys/fs/cgroup/" + h + "/" + p.cgPrefix
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup dir %s still there: %v", d, err)
		}
	}
	inv, err := p.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv) > 0 {
		t.Errorf("inventory after Teardown: %v", inv)
	}
}
