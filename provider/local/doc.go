// Package local is the local compute provider: real, isolated instances on
// one Linux host, registered as "local".
//
// Each instance is a systemd-nspawn container booting Debian with systemd and
// OpenSSH, started detached (no daemon: its nspawn process is its
// supervisor), in its own network namespace attached to a bridge in a router
// namespace owned by the provider, where nftables enforces default-deny
// ingress and the firewall rules. Its root is an overlay over a shared image
// (idmapped to the instance's own user id range) whose writable layer lives
// in a per-instance fscrypt-encrypted volume. See SECURITY.md.
//
// State lives under Config.Root as JSON files replaced atomically; one file
// lock serialises changes, so concurrent processes are safe.
//
// Everything needs root; New says what is missing otherwise.
package local
