#!/usr/bin/env bash
# Benchmark: ironic-snapshot capture against qemu-img convert -c (zstd) on a
# realistic 8 GiB disk, plus the same data on a 64 GiB disk for scaling.
# See tests/bench/README.md. Needs root. Exits non-zero only when a run or a
# validation fails; missed targets are printed as "TARGET MISSED" lines.
#
# Usage: tests/bench/run.sh [--runs N] [--no-64] [--qemu-64] [--profile] [--plan-only] [--nice N] [--cli PATH]
#                           [--out-dir DIR] [--stream] [--stream-only] [-- EXTRA ironic-snapshot ARGS]
# --stream adds the streaming path (-o -, as to Glance) at --memory-limit 256M and 1G on the 8 GiB
# disk and on a 2 TiB sparse disk holding the same data; --stream-only runs only the streams.
# Environment: BENCH_DIR (caches, disks, results; default /var/tmp/ironic-snapshot-bench)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bench_dir=${BENCH_DIR:-/var/tmp/ironic-snapshot-bench}
export BENCH_DIR=$bench_dir

runs=3 with64=1 qemu64=() profile=() plan_only=() nice=() cli="" out_dir=/dev/shm extra=() stream=()
while (($#)); do
    case $1 in
        --runs) runs=${2:?--runs needs a number}; shift 2 ;;
        --no-64) with64=0; shift ;;
        --qemu-64) qemu64=(--qemu-64); shift ;;
        --profile) profile=(--profile); shift ;;
        --plan-only) plan_only=(--plan-only); shift ;;
        --nice) nice=(--nice "${2:?--nice needs a number}"); shift 2 ;;
        --cli) cli=${2:?--cli needs a path}; shift 2 ;;
        --out-dir) out_dir=${2:?--out-dir needs a folder}; shift 2 ;;
        --stream) stream=(--stream 256M --stream 1G); shift ;;
        --stream-only) stream=(--stream 256M --stream 1G --stream-only); with64=0; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "run.sh: needs root (loop devices, mounts)" >&2; exit 1; }
mkdir -p "$bench_dir"

if [[ -z $cli ]]; then
    (cd "$repo" && cargo build --release --locked -p snapshot-cli)
    cli=$repo/target/release/ironic-snapshot
fi
# The planner alone, to measure what planning and its cross-check cost.
(cd "$repo" && cargo build --release --locked -p snapshot-core --example plan)
planner=$repo/target/release/examples/plan

# Disks are rebuilt when the scripts that make them change.
stamp=$(cat "$here/build-disk.sh" "$here/make-payload.py" | sha256sum | cut -c1-16)
disk() {
    local size=$1 img=$bench_dir/disk-$1.img
    if [[ ! -f $img || $(cat "$img.stamp" 2> /dev/null) != "$stamp" ]]; then
        rm -f "$img" "$img.stamp"
        [[ $(cat "$bench_dir/payload/.stamp" 2> /dev/null) == "$stamp" ]] || rm -rf "$bench_dir/payload"
        bash "$here/build-disk.sh" --size "${size^^}" "$img"
        echo "$stamp" > "$bench_dir/payload/.stamp"
        echo "$stamp" > "$img.stamp"
    fi
    echo "$img"
}
disk8=$(disk 8g)
args=(--cli "$cli" --planner "$planner" --disk8 "$disk8" --runs "$runs" --out-dir "$out_dir"
      --results "$bench_dir/results-$(date -u +%Y%m%dT%H%M%SZ).json" "${qemu64[@]}" "${profile[@]}" "${plan_only[@]}" "${nice[@]}")
if ((with64)); then
    args+=(--disk64 "$(disk 64g)")
fi
if ((${#stream[@]})); then
    args+=("${stream[@]}" --disk2t "$(disk 2t)")
fi
for a in "${extra[@]}"; do args+=("--ours-arg=$a"); done

exec python3 "$here/bench.py" "${args[@]}"
