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
#            [--glibc 2.36] [--dest DIR] [--src DIR] [--agent-wheel compiled|pure]
#   --pyver  the target's python3 (Debian bookworm: 3.11; wheels are cp311)
#   --glibc  the target's glibc (bookworm: 2.36): every manylinux_2_N wheel with
#            N <= this runs there (PEP 600), so pip may pick any of them
#   --dest   default packaging/wheelhouse/ARCH-cpPYVER
#   --src    the source tree to build our wheel from (default: this checkout;
#            e.g. a clean export of a release tag)
#   --agent-wheel  compiled (the default): the agent's wheel carries the compiled
#            ingest core for the target, built by build-wheel.sh in a bookworm
#            root of the target architecture (root, debootstrap; arm64 under
#            qemu-user). If that cannot be done here, this script stops and
#            says why. pure: the agent's wheel without the extension (any
#            machine, no root); the gateway then runs the pure-Python ingest
#            path and says so in its start-up log: correct, a few times slower.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prog=fetch-wheels
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
glibc="2.36"
dest=""
agent_wheel=compiled
python=${PYTHON:-python3}

while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --pyver) pyver=${2:?--pyver needs a value}; shift 2 ;;
        --glibc) glibc=${2:?--glibc needs a value}; shift 2 ;;
        --dest) dest=${2:?--dest needs a value}; shift 2 ;;
        --src) top=${2:?--src needs a value}; shift 2 ;;
        --agent-wheel) agent_wheel=${2:?--agent-wheel needs a value}; shift 2 ;;
        *) die "unknown argument: $1" ;;
    esac
done

check_target
glibc_minor=${glibc#2.}
case "$glibc_minor" in
    ''|*[!0-9]*) die "--glibc must look like 2.36, not '${glibc}'" ;;
esac
case "$agent_wheel" in
    compiled|pure) ;;
    *) die "--agent-wheel must be compiled or pure, not '${agent_wheel}'" ;;
esac
[ -n "$dest" ] || dest="$here/wheelhouse/$arch-cp$cpyver"

# A fresh directory each time: a wheel left over from an older fetch (another
# pyzmq version, the other architecture) must not end up in the package.
rm -rf "$dest"
mkdir -p "$dest"

# 1. Our own wheel, from a clean copy of the tree (lib.sh's clean_copy says
#    why), so the checkout is left as it was.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
clean_copy "$top" "$src"
if [ "$agent_wheel" = compiled ]; then
    # Built in the target's own Debian root: this machine's Python, glibc
    # and CPU must not end up in the extension (build-wheel.sh).
    "$here/build-wheel.sh" --arch "$arch" --pyver "$pyver" --glibc "$glibc" \
        --dest "$dest" --src "$src" >/dev/null ||
        die "the agent's wheel with the compiled ingest core for $arch could not be built (reason above).
  To package the pure-Python ingest path instead (slower; the agent logs which path runs):
    $0 --arch $arch --agent-wheel pure   (make -C packaging deb ARCH=$arch AGENT_WHEEL=pure)"
else
    # Pure: no extension, so the build machine's interpreter is fine.
    printf 'fetch-wheels: --agent-wheel pure: the %s package will run the pure-Python ingest path\n' \
        "$arch" >&2
    EDGE_AGENT_PURE_PYTHON=1 "$python" -m pip wheel --quiet --no-deps --wheel-dir "$dest" "$src"
fi

# 2. Its dependencies, resolved for the target from the wheel's own metadata
#    (setup.cfg's pins and markers: tomli is pulled only for 3.10). pip takes
#    a manylinux wheel only if one of the listed platform tags matches, so
#    list every manylinux_2_N the target's glibc can run, plus the legacy
#    alias of 2_17, and linux_MACHINE: the tag of our own compiled wheel (PyPI
#    refuses linux_ wheels, so no dependency comes with it).
set -- --platform "linux_$machine" --platform "manylinux2014_$machine"
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
