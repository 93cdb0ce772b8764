#!/usr/bin/env bash
# Sets up a fresh machine for ironic-snapshot and runs the main job on the
# built-in example disk:
#   1. Debian packages from tests/apt-packages.txt (needs root; skipped if present),
#      and qemu-system-x86 from bookworm-backports for the guest lab,
#   2. the virtualenv .venv with tests/requirements.txt and this package,
#      and .venv-nova with Nova 34 and Placement 16 for tests/nova,
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

say "Guest lab: qemu-system-x86 from bookworm-backports"
# The guest lab (tests/lab) boots real guests. Debian bookworm's own
# qemu-system-x86 would replace qemu-img 10 (from backports) with 7.2, so
# both come from the backports suite of the mirror apt already uses.
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2> /dev/null | grep -q 'ok installed'; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2> /dev/null | head -n 1)
        mirror=${mirror:-$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2> /dev/null)}
        [[ -n $mirror ]] || { echo "No bookworm mirror found in apt's sources" >&2; exit 1; }
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$mirror" > /etc/apt/sources.list.d/ironic-snapshot-backports.sources
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-utils qemu-system-x86 > /dev/null
fi
qemu-img --version | head -n 1 | grep -q 'version 10\.' || { echo "qemu-img is not 10.x: $(qemu-img --version | head -n 1)" >&2; exit 1; }

say "Python virtualenv .venv"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q -U pip
.venv/bin/pip install -q -r tests/requirements.txt
# The package itself, built by maturin (release build of the Rust engine).
.venv/bin/pip install -q -e .

say "Nova virtualenv .venv-nova (the Nova tests' cloud; Nova's pins do not fit .venv)"
[[ -x .venv-nova/bin/python ]] || python3 -m venv .venv-nova
.venv-nova/bin/pip install -q -U pip
# Keep in step with NOVA_REQUIREMENTS in tests/stack/nova.py; the tests install
# this package's wheel into it themselves. psycopg2: Nova's databases are in
# PostgreSQL (tests/stack/postgres.py).
.venv-nova/bin/pip install -q nova==34.0.0 openstack-placement==16.0.0 gunicorn \
    psycopg2-binary==2.9.13
.venv-nova/bin/pip check

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
