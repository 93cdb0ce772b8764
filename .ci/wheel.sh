#!/usr/bin/env bash
# Builds the wheel that goes into an ironic-python-agent ramdisk and proves it
# installs there. IPA ramdisks run CPython 3.12 on CentOS Stream 9 (glibc
# 2.34), so the wheel must be abi3 and tagged manylinux_2_28 or older. There is
# no container engine on CI, so maturin links against an old glibc with zig
# (the PyPI package ziglang) instead of a manylinux container.
#
# Steps: build (release, --zig, manylinux_2_28) into a temporary folder, check
# the file name tags and `auditwheel show`, install the wheel into fresh
# virtualenvs of every interpreter listed in WHEEL_PYTHONS (default python3.11
# and, when present, python3.12) and import ironic_snapshot._engine there.
#
# Usage: .ci/wheel.sh               build the wheel, then check it
#        .ci/wheel.sh --check WHEEL  only check an existing wheel
#
# Environment:
#   VENV            the virtualenv holding maturin, ziglang, auditwheel (.venv)
#   WHEEL_OUT       keep the built wheel in this folder (default: discarded)
#   WHEEL_PYTHONS   interpreters to install into (default: python3.11 python3.12)
#   CARGO_TARGET_DIR  build folder (default target/wheel-zig: kept apart from
#                   target/ because the zig C compiler would invalidate the
#                   build-script outputs, e.g. zstd-sys, of normal builds)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

venv=${VENV:-$repo/.venv}
max_glibc=2.28
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/wheel-zig}

say() { printf '\n==> %s\n' "$*" >&2; }
die() {
    printf 'wheel.sh: %s\n' "$*" >&2
    exit 1
}

check_only=
case ${1:-} in
    --check)
        [[ -f ${2:-} ]] || die "Usage: .ci/wheel.sh --check WHEEL (an existing .whl file)"
        check_only=$(realpath "$2")
        ;;
    "") ;;
    *) die "Usage: .ci/wheel.sh [--check WHEEL]" ;;
esac

tools=(auditwheel)
[[ -n $check_only ]] || tools+=(maturin)
for tool in "${tools[@]}"; do
    [[ -x $venv/bin/$tool ]] || die "$tool is missing from $venv; install tests/requirements.txt there first"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ -n $check_only ]]; then
    wheel=$check_only
    build_seconds=0
else
    "$venv/bin/python" -c 'import ziglang' 2> /dev/null ||
        die "The ziglang package is missing from $venv; install tests/requirements.txt there first"
    say "Building the abi3 manylinux_${max_glibc//./_} wheel with zig"
    start=$(date +%s)
    # maturin finds zig through the ziglang package of the Python on PATH.
    PATH="$venv/bin:$PATH" "$venv/bin/maturin" build --release --locked --zig \
        --compatibility "manylinux_${max_glibc//./_}" \
        -i python3.11 --out "$work/dist" >&2
    build_seconds=$(($(date +%s) - start))

    shopt -s nullglob
    wheels=("$work"/dist/*.whl)
    [[ ${#wheels[@]} -eq 1 ]] || die "Expected one wheel, found ${#wheels[@]}: ${wheels[*]}"
    wheel=${wheels[0]}
    say "Built $(basename "$wheel") in ${build_seconds}s"
fi
name=$(basename "$wheel")

# File name: ironic_snapshot-VERSION-cp311-abi3-manylinux_2_X_x86_64[.manylinux...].whl
IFS=- read -r _ _ py_tag abi_tag plat_tag <<< "${name%.whl}"
[[ $abi_tag == abi3 ]] || die "Wheel $name is not abi3 (ABI tag $abi_tag); keep pyo3's abi3 feature"
[[ $py_tag == cp311 ]] || die "Wheel $name targets $py_tag, expected cp311 (abi3 from Python 3.11)"

# Every platform tag must be manylinux with a glibc no newer than max_glibc.
glibc_minor() {
    # $1 = manylinux tag; prints the minor glibc version it stands for (all
    # are glibc 2.x), fails for anything but a manylinux tag.
    local major minor
    case $1 in
        manylinux2014_*) echo 17 ;;
        manylinux_*_*_*)
            IFS=_ read -r _ major minor _ <<< "$1"
            [[ $major == 2 && $minor =~ ^[0-9]+$ ]] && echo "$minor"
            ;;
        *) return 1 ;;
    esac
}
glibc_ok() {
    # $1 = manylinux tag; succeeds when its glibc <= max_glibc.
    local minor
    minor=$(glibc_minor "$1") && [[ $minor -le ${max_glibc#2.} ]]
}
IFS=. read -r -a plat_tags <<< "$plat_tag"
for tag in "${plat_tags[@]}"; do
    glibc_ok "$tag" || die "Wheel platform tag $tag is not manylinux_${max_glibc//./_} or older"
done

# The extension itself must be the stable-ABI build, not only the file name.
"$venv/bin/python" - "$wheel" << 'EOF'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
if "ironic_snapshot/_engine.abi3.so" not in names:
    sys.exit(f"wheel.sh: {sys.argv[1]} has no ironic_snapshot/_engine.abi3.so: {names}")
EOF

say "auditwheel show"
"$venv/bin/auditwheel" show "$wheel" | tee "$work/auditwheel.txt" >&2
# auditwheel names the most compatible tag the wheel's symbols allow, in the
# sentence 'constrains the platform tag to "manylinux_2_17_x86_64"'.
audit_tag=$(tr '\n' ' ' < "$work/auditwheel.txt" | grep -o 'platform tag to "[^"]*"' | head -n 1 | cut -d'"' -f2 || true)
[[ -n $audit_tag ]] || die "auditwheel show named no platform tag for $name"
glibc_ok "$audit_tag" || die "auditwheel says $name needs $audit_tag, newer than manylinux_${max_glibc//./_}"
# A file name claiming an older glibc than the symbols need would install
# where the engine cannot load.
audit_minor=$(glibc_minor "$audit_tag")
for tag in "${plat_tags[@]}"; do
    [[ $(glibc_minor "$tag") -ge $audit_minor ]] ||
        die "Wheel $name claims $tag but its symbols need $audit_tag (auditwheel show)"
done

# Finds an interpreter by name: on PATH, or (pyenv shims refuse versions that
# are not selected) among pyenv's installed versions.
find_python() {
    local name=$1 candidate
    if command -v "$name" > /dev/null && "$name" -c '' 2> /dev/null; then
        command -v "$name"
        return
    fi
    for candidate in "$(pyenv root 2> /dev/null || echo "$HOME/.pyenv")"/versions/*/bin/"$name"; do
        if [[ -x $candidate ]] && "$candidate" -c '' 2> /dev/null; then
            echo "$candidate"
            return
        fi
    done
    return 1
}

read -r -a pythons <<< "${WHEEL_PYTHONS:-python3.11 python3.12}"
installed=0
for py_name in "${pythons[@]}"; do
    if ! py=$(find_python "$py_name"); then
        [[ $py_name != python3.11 ]] || die "python3.11 is needed to check that the wheel installs"
        say "$py_name is not installed here; not checking the wheel on it"
        continue
    fi
    say "Installing into a fresh $py_name virtualenv ($py)"
    "$py" -m venv "$work/venv-$py_name"
    "$work/venv-$py_name/bin/pip" install -q --no-index --no-deps "$wheel"
    # Run outside the checkout so python/ironic_snapshot cannot shadow the wheel.
    (cd "$work" && "$work/venv-$py_name/bin/python" - << 'EOF')
import ironic_snapshot
import ironic_snapshot._engine as engine

assert "site-packages" in engine.__file__, engine.__file__
print(f"ironic_snapshot._engine {engine.VERSION} imported from {engine.__file__}")
EOF
    installed=$((installed + 1))
done
[[ $installed -gt 0 ]] || die "The wheel was installed into no interpreter"

if [[ -n ${WHEEL_OUT:-} && -z $check_only ]]; then
    mkdir -p "$WHEEL_OUT"
    cp "$wheel" "$WHEEL_OUT/"
    say "Kept $WHEEL_OUT/$name"
fi
built=${check_only:+"checked only"}
say "Wheel $name: abi3, $plat_tag (auditwheel: $audit_tag), imports on ${installed} interpreter(s), ${built:-built in ${build_seconds}s}"
