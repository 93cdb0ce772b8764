#!/usr/bin/env bash
# Builds the ironic-snapshot CLI as one fully static x86_64 Linux binary:
# glibc linked statically (crt-static), rustls for TLS (no OpenSSL), hickory
# for DNS (reads /etc/resolv.conf and /etc/hosts itself, so no NSS modules are
# loaded at run time). The result runs on any x86_64 Linux, including an
# agent ramdisk or an empty chroot.
#
# Usage: rust/snapshot-cli/build-static.sh [extra cargo arguments]
# Output: target/x86_64-unknown-linux-gnu/release-cli/ironic-snapshot
set -euo pipefail
cd "$(dirname "$0")/../.."

target=x86_64-unknown-linux-gnu
# --target keeps RUSTFLAGS away from build scripts and proc macros, which
# must stay dynamic.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --locked --profile release-cli -p snapshot-cli --target "$target" "$@"

binary=target/$target/release-cli/ironic-snapshot
if ldd "$binary" 2>&1 | grep -q '=>'; then
    echo "$binary is not static:" >&2
    ldd "$binary" >&2
    exit 1
fi
echo "$binary"
