package local

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/compute-sdk/compute"
)

// TestSSH: a new instance accepts SSH only after a rule opens port 22,
// with the injected key only, presenting the host key the provider
// reported, and its systemd is running.
func TestSSH(t *testing.T) {
	p := newTestProvider(t)
	key := newTestKey(t)
	ctx := context.Background()
	inst := create(t, p, compute.InstanceSpec{Name: "ssh1", SSHKeys: []string{key.auth}})
	if len(inst.SSH.HostKeys) != 1 || inst.SSH.HostKeys[0].Type != ssh.KeyAlgoED25519 {
		t.Fatalf("host keys %+v", inst.SSH.HostKeys)
	}
	// Port 22 is closed until a rule opens it.
	if _, err := dialSSH(inst, "root", key); err == nil {
		t.Fatal("ssh worked before any rule allowed it")
	}
	allowSSHFromHost(t, p, inst.ID)
	c := mustSSH(t, inst, key)
	if got := run(t, c, "systemctl is-system-running --wait"); got != "running" {
		failed, _ := runErr(c, "systemctl --failed --no-legend")
		t.Errorf("is-system-running = %q; failed units: %s", got, failed)
	}
	if got := run(t, c, "hostname"); got != "ssh1" {
		t.Errorf("hostname %q", got)
	}
	// The default user logs in with the same key and has sudo.
	uc, err := dialSSH(inst, "compute", key)
	if err != nil {
		t.Fatalf("ssh as compute: %v", err)
	}
	if got := run(t, uc, "sudo -n id -u"); got != "0" {
		t.Errorf("sudo id -u = %q", got)
	}
	uc.Close()

	// Passwords and keyboard-interactive are refused; another key too.
	cb, _ := inst.SSH.HostKeyCallback()
	for name, auth := range map[string]ssh.AuthMethod{
		"password": ssh.Password("root"),
		"keyboard-interactive": ssh.KeyboardInteractive(func(string, string, []string, []bool) ([]string, error) {
			return []string{"root"}, nil
		}),
		"other-key": ssh.PublicKeys(newTestKey(t).signer),
	} {
		_, err := ssh.Dial("tcp", inst.SSH.Addr(), &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{auth}, HostKeyCallback: cb, Timeout: 5 * time.Second})
		if err == nil {
			t.Errorf("%s login accepted", name)
		}
	}
	// A wrong host key is refused: the client never trusts on first use.
	bad := *inst
	bad.SSH.HostKeys = []compute.HostKey{compute.HostKeyOf(newTestKey(t).signer.PublicKey())}
	if _, err := dialSSH(&bad, "root", key); err == nil || !strings.Contains(err.Error(), "host key") {
		t.Errorf("login with a wrong expected host key: %v", err)
	}

	got, err := p.GetInstance(ctx, inst.ID)
	if err != nil || got.Status != compute.StatusRunning {
		t.Fatalf("get: %+v %v", got, err)
	}
	if err := p.TerminateInstance(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := p.GetInstance(ctx, inst.ID); !errorsIsNotFound(err) {
		t.Errorf("get after terminate: %v", err)
	}
	if left := instanceObjects(t, p); len(left) > 0 {
		t.Errorf("after terminate: %v", left)
	}
	if _, err := os.Stat(p.instDir(inst.ID)); !os.IsNotExist(err) {
		t.Errorf("instance dir remains: %v", err)
	}
}
