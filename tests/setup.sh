#!/usr/bin/env bash
# Sets up a fresh machine for ironic-snapshot and runs the main job on the
# built-in example disk:
#   1. Debian packages from tests/apt-packages.txt (needs root; skipped if present),
#   2. the virtualenv .venv with tests/requirements.txt and this package,
#   3. the release CLI (target/release/ironic-snapshot),
#   4. capture of the example disk into a qcow2 image, judged by qemu-img.
# Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

say() { printf '\n==> %s\n' "$*" >&2; }

say "Debian packages"
mapfile -t apt_packages < <(grep -v '^\s*\(#\|$\)' tests/apt-packages.txt)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2> /dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "Missing Debian packages: ${missing[*]}; run this as root or install them first" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
fi

say "Python virtualenv .venv"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q -U pip
.venv/bin/pip install -q -r tests/requirements.txt
# The package itself, built by maturin (release build of the Rust engine).
.venv/bin/pip install -q -e .

say "Release CLI"
cargo build --release --locked -p snapshot-cli 2>&1 | tail -n 2

say "Example: capture the built-in example disk"
# The source lives on tmpfs, the image in a folder of its own: both go when setup ends.
# (An image beside its source file is allowed; only the source itself is refused.)
example=$(mktemp -d -p /dev/shm)
out=$(mktemp -d)
trap 'rm -rf "$example" "$out"' EXIT
bash tests/example/build-disk.sh "$example/disk.img" > /dev/null
sha_before=$(sha256sum < "$example/disk.img")
target/release/ironic-snapshot capture "$example/disk.img" -o "$out/disk.qcow2" --json
qemu-img check -q "$out/disk.qcow2"
qemu-img compare -q "$example/disk.img" "$out/disk.qcow2"
[[ $(sha256sum < "$example/disk.img") == "$sha_before" ]]
say "Example image passed qemu-img check and compare; the source is unchanged"
