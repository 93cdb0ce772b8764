#!/usr/bin/env bash
# Builds the benchmark's realistic disk image: a sparse raw file with a GPT,
# a 256 MiB FAT EFI system partition, a 512 MiB swap partition holding stale
# pages, and an ext4 root filling the rest with a debootstrapped Debian 12
# (minbase), about 1 GiB of mixed data, and about 512 MiB of deleted files
# whose data is left in the free blocks.
#
# Usage: build-disk.sh [--size SIZE] OUTPUT.img      (SIZE for truncate, default 8G)
#
# Caches (under BENCH_DIR, default /var/tmp/ironic-snapshot-bench): the Debian
# tree as a tarball and the generated payload, both built on first use. Needs
# root (loop devices and an ext4 mount). Every loop device and mount it makes is
# removed on exit, also on failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bench_dir=${BENCH_DIR:-/var/tmp/ironic-snapshot-bench}
size=8G
if [[ ${1:-} == --size ]]; then
    size=${2:?--size needs a value}
    shift 2
fi
out=${1:?usage: build-disk.sh [--size SIZE] OUTPUT.img}
[[ $(id -u) == 0 ]] || { echo "build-disk.sh: needs root for loop devices and mount" >&2; exit 1; }
mkdir -p "$bench_dir"

tarball=$bench_dir/debian-bookworm-minbase.tar
payload=$bench_dir/payload

# The Debian tree: a few minutes from deb.debian.org, then cached.
if [[ ! -f $tarball ]]; then
    echo "build-disk: debootstrap bookworm minbase (a few minutes)" >&2
    rm -rf "$bench_dir/rootfs.tmp"
    debootstrap --variant=minbase bookworm "$bench_dir/rootfs.tmp" http://deb.debian.org/debian \
        > "$bench_dir/debootstrap.log" 2>&1 \
        || { echo "build-disk: debootstrap failed, see $bench_dir/debootstrap.log" >&2; exit 1; }
    tar -C "$bench_dir/rootfs.tmp" --numeric-owner --xattrs --acls -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$bench_dir/rootfs.tmp"
fi
if [[ ! -d $payload ]]; then
    echo "build-disk: generating the payload (about a minute)" >&2
    rm -rf "$payload.tmp"
    python3 "$here/make-payload.py" "$payload.tmp" >&2
    mv "$payload.tmp" "$payload"
fi

work=$(mktemp -d "$bench_dir/build.XXXXXX")
loops=()
mnt=$work/mnt
cleanup() {
    mountpoint -q "$mnt" 2> /dev/null && umount "$mnt"
    for l in "${loops[@]}"; do losetup -d "$l" 2> /dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

img=$work/disk.img
truncate -s "$size" "$img"
# Layout: ESP at 1 MiB (256 MiB), swap (512 MiB), root to the end of the disk.
sfdisk --quiet "$img" <<'SFDISK'
label: gpt
start=1MiB, size=256MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=257MiB, size=512MiB, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=swap
start=769MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root
SFDISK

# Byte offset and size of partition N (1-based), from sfdisk's JSON.
part() {
    sfdisk -J "$img" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
p = t["partitions"][int(sys.argv[1]) - 1]
ss = t.get("sectorsize", 512)
print(p["start"] * ss, p["size"] * ss)' "$1"
}
# A loop device over partition N of the image (losetup -P makes no nodes here),
# left in $dev; not echoed, because a $(...) subshell would lose the loops+= record.
loop_part() {
    local off len
    read -r off len < <(part "$1")
    dev=$(losetup -f --show -o "$off" --sizelimit "$len" "$img")
    loops+=("$dev")
}

# ESP: the kernel has no vfat, so format a file and fill it with mtools.
read -r esp_off esp_len < <(part 1)
mkfs.vfat -F 32 -n ESP -C "$work/esp.img" $((esp_len / 1024)) > /dev/null
(cd "$payload/esp" && find . -mindepth 1 -type d | sort | sed 's|^\./|::|' | xargs -r mmd -i "$work/esp.img")
(cd "$payload/esp" && find . -type f | sort | while read -r f; do mcopy -i "$work/esp.img" "$f" "::${f#./}"; done)
dd if="$work/esp.img" of="$img" bs=1M seek=$((esp_off >> 20)) conv=notrunc,sparse status=none

# Swap: a used swap partition holds stale pages; put 128 MiB of old text there.
read -r swap_off _ < <(part 2)
dd if="$payload/junk/old-run.log" of="$img" bs=1M count=128 seek=$((swap_off >> 20)) conv=notrunc status=none
loop_part 2
mkswap -L swap "$dev" > /dev/null

# Root: Debian tree + payload, then stale data left behind by deleted files.
loop_part 3
root_dev=$dev
mkfs.ext4 -q -L root "$root_dev"
mkdir "$mnt"
# noinit_itable: no background thread writing zeroed inode tables into the image.
mount -o noinit_itable "$root_dev" "$mnt"
tar -C "$mnt" --numeric-owner --xattrs --acls -xf "$tarball"
cp -a "$payload/root/." "$mnt/"
printf 'bench-node\n' > "$mnt/etc/hostname"
printf 'LABEL=root / ext4 errors=remount-ro 0 1\nLABEL=ESP /boot/efi vfat umask=0077 0 1\nLABEL=swap none swap sw 0 0\n' > "$mnt/etc/fstab"
sync -f "$mnt"
mkdir -p "$mnt/var/tmp/old"
cp "$payload/junk/"* "$mnt/var/tmp/old/"
sync -f "$mnt"
rm -rf "$mnt/var/tmp/old"
sync -f "$mnt"
used=$(df -B1 --output=used "$mnt" | tail -1)
umount "$mnt"
e2fsck -fn "$root_dev" > "$work/e2fsck.log" 2>&1 || { cat "$work/e2fsck.log" >&2; exit 1; }

for l in "${loops[@]}"; do losetup -d "$l"; done
loops=()
mv "$img" "$out"
echo "build-disk: $out: $size, root used $((used >> 20)) MiB, file allocated $(du -m "$out" | cut -f1) MiB" >&2
