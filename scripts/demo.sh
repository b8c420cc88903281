#!/usr/bin/env bash
# The local demo: sets up the host (packages, image), then creates a
# two-instance cluster plus one other instance and shows, with real probes,
# that the security model holds. Cleans up after itself. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
ctl=./bin/computectl

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ok() { printf '   \033[32mPASS\033[0m %s\n' "$*"; }
bad() { printf '   \033[31mFAIL\033[0m %s\n' "$*"; failed=1; }
failed=0

# A throwaway key for the demo, so we never touch the user's own keys.
work=$(mktemp -d)
cleanup() {
	step "cleaning up"
	$ctl delete --quiet demo-a1 demo-a2 demo-b1 2>/dev/null || true
	$ctl cluster delete demo-a 2>/dev/null || true
	$ctl cluster delete demo-b 2>/dev/null || true
	$ctl teardown 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N '' -C compute-demo -f "$work/id_ed25519"
sshi=(-i "$work/id_ed25519")

step "building the instance image (cached after the first run)"
$ctl image build

step "creating cluster demo-a (2 instances) and cluster demo-b (1 instance), nothing opened"
$ctl cluster create demo-a
$ctl cluster create demo-b
$ctl create demo-a1 --cluster demo-a --ssh-key "$work/id_ed25519.pub" --no-ssh-rule --wait &
$ctl create demo-a2 --cluster demo-a --ssh-key "$work/id_ed25519.pub" --no-ssh-rule --wait &
$ctl create demo-b1 --cluster demo-b --ssh-key "$work/id_ed25519.pub" --no-ssh-rule --wait &
wait
$ctl list

addr() { $ctl get "$1" -o json | sed -n 's/.*"host": "\([0-9.]*\)".*/\1/p' | head -n1; }
a1=$(addr demo-a1); a2=$(addr demo-a2); b1=$(addr demo-b1)
# tcp_open HOST PORT: can this host open a TCP connection (2 s timeout)?
tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

step "default deny: sshd listens inside demo-a1, but no rule allows port 22"
if tcp_open "$a1" 22; then bad "host reached $a1:22 with no rule"; else ok "host -> demo-a1:22 blocked"; fi

step "a rule opens port 22 to this host only"
$ctl firewall add cluster:demo-a "tcp:22 from $($ctl caller)"
$ctl firewall list cluster:demo-a
if tcp_open "$a1" 22; then ok "host -> demo-a1:22 open"; else bad "host could not reach $a1:22 after the rule"; fi
if tcp_open "$b1" 22; then bad "rule on demo-a opened demo-b1"; else ok "host -> demo-b1:22 still blocked (other cluster)"; fi

step "ssh with strict host-key checking (the key the API returned)"
$ctl ssh "${sshi[@]}" demo-a1 -- systemctl is-system-running

step "intra-cluster traffic is allowed: demo-a1 -> demo-a2:22"
if $ctl ssh "${sshi[@]}" demo-a1 -- timeout 2 bash -c "'exec 3<>/dev/tcp/$a2/22'"; then ok "demo-a1 -> demo-a2 open"; else bad "cluster peers could not talk"; fi

step "cross-cluster traffic is denied: demo-a1 -> demo-b1:22"
if $ctl ssh "${sshi[@]}" demo-a1 -- timeout 2 bash -c "'exec 3<>/dev/tcp/$b1/22'"; then bad "demo-a1 reached demo-b1"; else ok "demo-a1 -> demo-b1 blocked"; fi

step "revoking the rule closes port 22 again"
$ctl firewall set cluster:demo-a --none
if tcp_open "$a1" 22; then bad "port 22 still open after revoke"; else ok "host -> demo-a1:22 blocked again"; fi

if [ "$failed" != 0 ]; then
	echo "demo: a property did not hold" >&2
	exit 1
fi
step "all properties held"
