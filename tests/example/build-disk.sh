#!/usr/bin/env bash
# Builds the built-in example disk: a 256 MiB GPT disk image with an EFI
# system partition (FAT) and an ext4 root partition holding real files.
# Needs no root and no loop devices: mkfs.ext4 -d fills the filesystem from a
# folder, mtools writes the FAT one, and dd places both into the disk image.
#
# Usage: build-disk.sh OUTPUT.img
set -euo pipefail

out=${1:?usage: build-disk.sh OUTPUT.img}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Layout, in MiB: 1 MiB for the GPT, a 32 MiB ESP, the rest ext4 root,
# and the backup GPT in the last 34 sectors.
esp_start=1 esp_size=32 root_start=33 disk_size=256
root_size=$((disk_size - root_start - 1))

# A small but real root tree: text, a binary, a symlink, a sparse-ish file.
tree="$work/root"
mkdir -p "$tree"/{etc,usr/bin,var/log,home/researcher/experiment}
printf 'example-node\n' > "$tree/etc/hostname"
cp /etc/os-release "$tree/etc/os-release"
cp "$(command -v bash)" "$tree/usr/bin/bash"
ln -s bash "$tree/usr/bin/sh"
for i in $(seq 1 2000); do echo "$(date -u +%FT%T) node kernel: event $i ok"; done > "$tree/var/log/syslog"
head -c $((4 << 20)) /dev/urandom > "$tree/home/researcher/experiment/results.bin"
seq 1 200000 > "$tree/home/researcher/experiment/series.csv"

truncate -s "${disk_size}M" "$out"
sfdisk --quiet "$out" <<SFDISK
label: gpt
start=${esp_start}MiB, size=${esp_size}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=${root_start}MiB, size=${root_size}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
SFDISK

mkfs.vfat -n ESP -C "$work/esp.img" $((esp_size * 1024)) > /dev/null
mmd -i "$work/esp.img" ::EFI ::EFI/BOOT
printf 'example boot loader\n' > "$work/BOOTX64.EFI"
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::EFI/BOOT/BOOTX64.EFI

mkfs.ext4 -q -F -L root -d "$tree" "$work/root.img" "${root_size}M" 2> /dev/null

dd if="$work/esp.img" of="$out" bs=1M seek="$esp_start" conv=notrunc,sparse status=none
dd if="$work/root.img" of="$out" bs=1M seek="$root_start" conv=notrunc,sparse status=none
echo "$out"
