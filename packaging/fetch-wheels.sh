#!/bin/sh
# packaging/fetch-wheels.sh - step one of the .deb build: the wheelhouse.
#
# Fills a directory with every wheel the agent needs on the TARGET (its CPU
# architecture and CPython minor version), not on this build machine: our own
# wheel from this checkout, and the binary wheels of its runtime dependencies
# as declared in setup.cfg (pyzmq, cbor2, mmh3, bottle, waitress, ...). This is the only
# step that uses the network (PyPI); build-deb.sh then works offline from the
# directory, and the gateway installs from the copy shipped in the package.
#
# Usage: packaging/fetch-wheels.sh --arch amd64|arm64 [--pyver 3.11]
#                                  [--glibc 2.36] [--dest DIR] [--src DIR]
#   --pyver  the target's python3 (Debian bookworm: 3.11; wheels are cp311)
#   --glibc  the target's glibc (bookworm: 2.36): every manylinux_2_N wheel with
#            N <= this runs there (PEP 600), so pip may pick any of them
#   --dest   default packaging/wheelhouse/ARCH-cpPYVER
#   --src    the source tree to build our wheel from (default: this checkout;
#            e.g. a clean export of a release tag)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prog=fetch-wheels
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
glibc="2.36"
dest=""
python=${PYTHON:-python3}

while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --pyver) pyver=${2:?--pyver needs a value}; shift 2 ;;
        --glibc) glibc=${2:?--glibc needs a value}; shift 2 ;;
        --dest) dest=${2:?--dest needs a value}; shift 2 ;;
        --src) top=${2:?--src needs a value}; shift 2 ;;
        *) die "unknown argument: $1" ;;
    esac
done

check_target
glibc_minor=${glibc#2.}
case "$glibc_minor" in
    ''|*[!0-9]*) die "--glibc must look like 2.36, not '${glibc}'" ;;
esac
[ -n "$dest" ] || dest="$here/wheelhouse/$arch-cp$cpyver"

# A fresh directory each time: a wheel left over from an older fetch (another
# pyzmq version, the other architecture) must not end up in the package.
rm -rf "$dest"
mkdir -p "$dest"

# 1. Our own wheel: pure Python, so the build machine's interpreter is fine.
#    Built from a clean copy of the tree: setuptools reuses ./build/lib, so a
#    module deleted from agent/ but still there would end up in the wheel; and
#    the checkout is left as it was.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -C "$top" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='./*.egg-info' \
    --exclude=./var --exclude=./packaging/out --exclude=./packaging/wheelhouse \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis --exclude=.mypy_cache \
    -cf - . | tar -C "$src" -xf -
# A pure wheel: the compiled ingest core of this build machine's CPU must not
# end up in another architecture's package (agent/fastpath.py falls back to
# Python where the extension is missing).
EDGE_AGENT_PURE_PYTHON=1 "$python" -m pip wheel --quiet --no-deps --wheel-dir "$dest" "$src"

# 2. Its dependencies, resolved for the target from the wheel's own metadata
#    (setup.cfg's pins and markers: tomli is pulled only for 3.10). pip takes
#    a manylinux wheel only if one of the listed platform tags matches, so
#    list every manylinux_2_N the target's glibc can run, plus the legacy
#    alias of 2_17.
set -- --platform "manylinux2014_$machine"
n=17
while [ "$n" -le "$glibc_minor" ]; do
    set -- "$@" --platform "manylinux_2_${n}_$machine"
    n=$((n + 1))
done
agent_wheel=""
for whl in "$dest"/edge_agent-*.whl; do agent_wheel=$whl; done
[ -f "$agent_wheel" ] || die "pip wheel made no edge_agent wheel in $dest"
"$python" -m pip download --quiet --disable-pip-version-check \
    --only-binary=:all: "$@" \
    --python-version "$pyver" --implementation cp --abi "cp$cpyver" --abi abi3 --abi none \
    --dest "$dest" "$agent_wheel"

# A record of what was fetched, kept next to the wheels (and quoted by the
# build log): name, version and tags are all in the file names.
for whl in "$dest"/*.whl; do basename "$whl"; done > "$dest/WHEELS"
printf 'fetch-wheels: %s wheels for %s (cp%s, glibc %s) in %s\n' \
    "$(wc -l < "$dest/WHEELS" | tr -d ' ')" "$arch" "$cpyver" "$glibc" "$dest"
sed 's/^/  /' "$dest/WHEELS"
