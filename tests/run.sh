#!/usr/bin/env bash
# Runs every test suite: the Rust workspace tests, then the pytest suites
# (CLI, filesystem-aware capture, the service step against real Ironic, IPA
# and Glance, the client against Keystone, packaging). Run tests/setup.sh
# once first. Benchmarks (tests/bench) are not tests and are not run here.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked
# The Python tests load the engine from python/ironic_snapshot: rebuild it in
# place so that they test the Rust code as it is now, not as setup.sh found it.
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --release --skip-install --locked -q
.venv/bin/python -m pytest -ra "$@"
