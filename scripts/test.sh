#!/usr/bin/env bash
# Runs every test: vet, unit, fuzz (short), integration and conformance
# against the local provider. Run as root on a Debian/Ubuntu host with Go.
#
# FUZZTIME (default 30s) bounds each fuzz target. Integration tests that
# cannot run (not root, missing kernel feature) fail instead of skipping,
# because COMPUTE_REQUIRE_INTEGRATION=1.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
export COMPUTE_REQUIRE_INTEGRATION=1

echo "== image build (from scratch)"
./bin/computectl image build --force

echo "== go vet"
go vet ./...

echo "== go test"
# Root-needing packages share the host's kernel: run packages one at a time
# (-p 1); each package uses its own state root, name prefix and address pool.
go test -p 1 -count=1 -timeout 40m ./... 2>&1 | tee /tmp/compute-go-test.log
status=${PIPESTATUS[0]}
if [ "$status" != 0 ]; then
	echo "== summary (go test failed)"
	grep -E '^(ok|FAIL|panic)' /tmp/compute-go-test.log || true
	exit "$status"
fi

echo "== fuzz (${FUZZTIME:-30s} per target)"
# go test -fuzz takes one target per run: loop over every Fuzz function.
for file in $(grep -rl --include='*_test.go' '^func Fuzz' .); do
	pkg=./$(dirname "${file#./}")
	for target in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$file"); do
		echo "-- $pkg $target"
		go test "$pkg" -run='^$' -fuzz="^${target}\$" -fuzztime="${FUZZTIME:-30s}" 2>&1 | tee -a /tmp/compute-go-test.log
		[ "${PIPESTATUS[0]}" = 0 ] || { echo "fuzz $target failed" >&2; exit 1; }
	done
done

echo "== summary"
grep -E '^(ok|FAIL|panic|\?)' /tmp/compute-go-test.log || true
