#!/usr/bin/env bash
# Runs every test suite: the Rust workspace tests, then the pytest suites
# (CLI, filesystem-aware capture, the service step against real Ironic, IPA
# and Glance, the client against Keystone, packaging). Run tests/setup.sh
# once first. Benchmarks (tests/bench) are not tests and are not run here.
set -euo pipefail
cd "$(dirname "$0")/.."

# Scratch space for every test (disk images, loop devices' backing files,
# the stacks' state, pytest's tmp_path) lives in RAM, in a tmpfs of our own:
# a machine's free disk space varies from tens of GiB to a few hundred MiB,
# its memory does not. IRONIC_SNAPSHOT_TEST_TMPDIR=DIR uses DIR instead (to
# keep a failed test's files after the run).
scratch=${IRONIC_SNAPSHOT_TEST_TMPDIR:-}
if [ -z "$scratch" ]; then
    scratch=$(mktemp -d /dev/shm/ironic-snapshot-tests.XXXXXX 2>/dev/null \
        || mktemp -d)
    # A cap on the tmpfs, not a reservation: it only holds what is written.
    mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    if mount -t tmpfs -o "size=$((mem_kib * 6 / 10))k,mode=1777" \
        ironic-snapshot-tests "$scratch" 2>/dev/null; then
        trap 'umount "$scratch" 2>/dev/null || umount -l "$scratch"; rmdir "$scratch"' EXIT
    else
        trap 'rm -rf "$scratch"' EXIT
    fi
fi
export TMPDIR="$scratch"
echo "tests/run.sh: scratch in $scratch ($(df -h --output=fstype,avail "$scratch" | tail -1)); free on /: $(df -h --output=avail / | tail -1)"

cargo test --workspace --locked
# The Python tests load the engine from python/ironic_snapshot: rebuild it in
# place so that they test the Rust code as it is now, not as setup.sh found it.
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --release --skip-install --locked -q
.venv/bin/python -m pytest -ra "$@"
