#!/usr/bin/env bash
# Runs every test suite: the Rust lint gates (cargo fmt --check, clippy -D
# warnings), the Rust workspace tests, then the pytest suites
# (CLI, filesystem-aware capture, the service step against real Ironic, IPA
# and Glance, the client against Keystone, packaging; the Nova driver's suite
# in a session of its own beside them). Run tests/setup.sh once first. With
# arguments, only `cargo test` and `pytest ARGS`. Benchmarks (tests/bench) are not tests and are not run here.
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

# Lint gates first, on every run: seconds once built, and they fail before
# any test starts. The Rust must be formatted and clippy-clean workspace-wide.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# The Python tests load the engine from python/ironic_snapshot: rebuild it in
# place so that they test the Rust code as it is now, not as setup.sh found it.
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --release --skip-install --locked -q

if [ $# -gt 0 ]; then
    cargo test --workspace --locked
    .venv/bin/python -m pytest -ra "$@"
    exit
fi

# The whole run. tests/nova (a whole Nova cloud: it spends most of its time
# waiting on services, timers and the agent) runs as a pytest session of its
# own beside everything else, started first so that its cloud comes up while
# cargo compiles; its output is shown when it ends. Each session has its own
# basetemp, so neither cleans the other's folders.
nova_log="$scratch/nova-suite.log"
.venv/bin/python -m pytest -ra -p no:cacheprovider --basetemp="$scratch/pytest-nova" \
    tests/nova > "$nova_log" 2>&1 &
nova_pid=$!
status=0
cargo test --workspace --locked || status=$?
if [ "$status" -eq 0 ]; then
    .venv/bin/python -m pytest -ra --basetemp="$scratch/pytest-main" || status=$?
fi
# Always let the Nova session end by itself: its fixtures stop the cloud
# and free its loop device, and its result is worth having either way.
nova_status=0
wait "$nova_pid" || nova_status=$?
echo
echo "==== tests/nova (its own pytest session, run beside the others) ===="
cat "$nova_log"
if [ "$status" -ne 0 ]; then
    exit "$status"
fi
exit "$nova_status"
