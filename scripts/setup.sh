#!/usr/bin/env bash
# Installs what compute's local provider needs on a Debian/Ubuntu host, builds
# computectl into ./bin and prepares the host (idempotent). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "setup: must run as root (the local provider creates network namespaces, mounts and containers)" >&2
	exit 1
fi

pkgs=(debootstrap systemd-container nftables e2fsprogs iproute2 openssh-client util-linux ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}"
fi

# Each booted instance uses ~8 inotify instances; the default of 128 caps a
# host at ~15 instances (see provider/local/SECURITY.md and `computectl doctor`).
cur=$(sysctl -n fs.inotify.max_user_instances)
if [ "$cur" -lt 8192 ]; then
	sysctl -qw fs.inotify.max_user_instances=8192
fi

mkdir -p bin
go build -o bin/computectl ./cmd/computectl
