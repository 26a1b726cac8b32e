#!/bin/sh
# packaging/build-wheel.sh - the agent's own wheel WITH its compiled ingest core
# (agent/_speedups.pyx, issue 10), built for the target, not for this machine.
#
# A C extension is tied to a CPU, a CPython minor and (through its symbol
# versions) the oldest glibc it runs on. So it is built where all three are the
# target's: in a Debian bookworm root of the target architecture (amd64
# natively, arm64 under qemu-user through binfmt_misc), with the root's own
# gcc, python3.11-dev and glibc 2.36. Nothing of this build machine (another
# Python, a newer glibc or gcc, its x86_64 objects) can leak into the wheel.
#
# The build root is a copy of arm-smoke.sh's minimal root (same cache) with
# build-essential, python3-dev and python3-venv, plus a venv holding
# pyproject.toml's build requirements (Cython) from PyPI. Both are cached:
# the first arm64 run takes minutes under emulation, later ones reuse them.
#
# The result is checked, never trusted: setup.py installs pure Python when the
# compile fails (an optional extension), so the wheel must be tagged
# cpXY-cpXY-linux_MACHINE, hold agent/_speedups.cpython-XY-MACHINE-linux-gnu.so,
# load in the root's python3 (dlopen resolves every symbol against that
# interpreter) and need no glibc newer than --glibc. Any failure exits 2 with
# the reason; fetch-wheels.sh then says how to package the pure wheel instead.
#
# Usage (as root): packaging/build-wheel.sh --arch amd64|arm64 --dest DIR
#                      [--pyver 3.11] [--glibc 2.36] [--src DIR]
# Environment: SMOKE_CACHE (default /var/tmp/edge-agent-smoke), MIRROR (as
# arm-smoke.sh). Output: the wheel in DIR; its name on the last line of stdout.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prog="build-wheel"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
glibc="2.36"
dest=""
suite=bookworm
cache=${SMOKE_CACHE:-/var/tmp/edge-agent-smoke}

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
[ -n "$dest" ] || die "--dest is required"
[ "$(id -u)" = 0 ] || die "the compiled wheel is built in a $suite $arch root: run as root (debootstrap, chroot, mount)"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing: apt-get install debootstrap"
why=$(can_run_arch "$arch" 2>&1) || die "this machine cannot run $arch binaries: $why"

base="$cache/$suite-$arch"
build="$cache/$suite-$arch-build"
venv=/opt/wheel-build
in_build() { chroot "$build" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 HOME=/root ${pip_cert:+PIP_CERT=$pip_cert} "$@"; }
log="$build.log"

mounted_under() { awk -v r="$1" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/self/mounts; }
cleanup() {
    for m in $(mounted_under "$build" | sort -r); do umount "$m" || umount -l "$m" || true; done
}
trap cleanup EXIT INT TERM

# One build per root at a time: a second one would mount /proc over the first's
# and delete its source copy. The lock lives beside the root, not in it.
mkdir -p "$cache"
exec 9>"$build.lock"
flock -n 9 || die "another build-wheel.sh is using $build (lock $build.lock)"

t0=$(date +%s)
# -- the build root (cached) ------------------------------------------------------
if [ ! -f "$build/.build-root-ok" ]; then
    printf 'build-wheel: making the %s %s build root in %s (once; minutes under emulation)\n' \
        "$suite" "$arch" "$build" >&2
    bootstrap_root "$base" "$arch" "$suite"
    rm -rf "$build"
    cp -a "$base" "$build"
fi
mount -t proc proc "$build/proc"
cp /etc/resolv.conf "$build/etc/resolv.conf"
# pip in the root trusts what this host's pip trusts (a site's TLS-inspecting
# proxy CA included): PIP_CERT, else the system bundle, else pip's own certifi.
host_ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
pip_cert=""
if [ -f "$host_ca" ]; then
    cp "$host_ca" "$build/etc/edge-agent-build-ca.crt"
    pip_cert=/etc/edge-agent-build-ca.crt
fi
if [ ! -f "$build/.build-root-ok" ]; then
    {
        in_build apt-get update -q &&
        in_build apt-get install -y -q --no-install-recommends \
            build-essential "python$pyver-dev" "python$pyver-venv" python3-dev python3-venv &&
        in_build "python$pyver" -m venv "$venv"
    } > "$build.setup.log" 2>&1 ||
        { tail -n 20 "$build.setup.log" >&2; die "setting up the build root failed (log: $build.setup.log)"; }
    touch "$build/.build-root-ok"
fi
: > "$log"
have=$(in_build "python$pyver" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    die "no python$pyver in the $suite $arch root: --pyver $pyver is not $suite's Python"
[ "$have" = "$pyver" ] || die "python$pyver in the root is $have"

# pyproject.toml's [build-system] requires (Cython, setuptools, wheel), read by
# the root's own python (tomllib), installed from PyPI into the build venv:
# the build then runs without build isolation, so exactly these are used.
rm -rf "$build/tmp/edge-agent-src" "$build/tmp/edge-agent-wheel"
clean_copy "$top" "$build/tmp/edge-agent-src"
# shellcheck disable=SC2046 # one argument per requirement, none with spaces
in_build "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $(
    in_build "$venv/bin/python" -c 'import tomllib
print(" ".join(tomllib.load(open("/tmp/edge-agent-src/pyproject.toml", "rb"))["build-system"]["requires"]))'
) >> "$log" 2>&1 || { tail -n 20 "$log" >&2; die "pip install of the build requirements failed (log: $log)"; }

# -- the wheel ----------------------------------------------------------------------
# EDGE_AGENT_PURE_PYTHON is not passed (env -i): setup.py builds the extension.
in_build sh -c "cd /tmp/edge-agent-src && $venv/bin/python -m pip wheel -v --no-deps \
    --no-build-isolation --disable-pip-version-check --wheel-dir /tmp/edge-agent-wheel ." \
    >> "$log" 2>&1 || { tail -n 30 "$log" >&2; die "pip wheel failed in the $arch root (log: $log)"; }
grep '^ *edge-agent: ' "$log" | tail -n 3 | sed 's/^/build-wheel: setup.py said: /' >&2 || true

whl=""
for f in "$build"/tmp/edge-agent-wheel/edge_agent-*.whl; do [ -f "$f" ] && whl=$f; done
[ -n "$whl" ] || die "pip wheel made no edge_agent wheel (log: $log)"
name=$(basename "$whl")
case "$name" in
    *"-cp$cpyver-cp$cpyver-linux_$machine.whl") ;;
    *) die "$name: not a cp$cpyver-cp$cpyver-linux_$machine wheel: the extension was not built (setup.py's reason above; log: $log)" ;;
esac
so="agent/_speedups.cpython-$cpyver-$machine-linux-gnu.so"
# The wheel must hold the extension, and the extension must load in the
# target's interpreter (an unresolved symbol fails dlopen here, not on the gateway).
# shellcheck disable=SC2016 # $1 and $2 belong to the inner sh
in_build sh -c 'set -e; rm -rf /tmp/edge-agent-check; mkdir /tmp/edge-agent-check
    cd /tmp/edge-agent-check && "$1" -m zipfile -e "/tmp/edge-agent-wheel/$(basename "$2")" .' \
    sh "$venv/bin/python" "$whl" || die "$name: cannot unpack it"
[ -f "$build/tmp/edge-agent-check/$so" ] || die "$name has no $so"
in_build "python$pyver" -c 'import ctypes, sys
lib = ctypes.PyDLL(sys.argv[1])
assert lib.PyInit__speedups' "/tmp/edge-agent-check/$so" ||
    die "$so does not load in the root's python$pyver"
# The newest glibc symbol version it uses (GLIBC_2.N), against the target's.
need=$(in_build objdump -T "/tmp/edge-agent-check/$so" |
    sed -n 's/.*GLIBC_2\.\([0-9]*\).*/\1/p' | sort -n | tail -n 1)
[ "${need:-0}" -le "${glibc#2.}" ] || die "$so needs glibc 2.$need, the target has $glibc"
cython=$(in_build "$venv/bin/python" -c 'import Cython; print(Cython.__version__)')
gcc=$(in_build gcc -dumpfullversion)

mkdir -p "$dest"
cp "$whl" "$dest/"
printf 'build-wheel: %s: compiled ingest core for %s, built in %s %s (python%s, gcc %s, Cython %s), needs glibc >= 2.%s; %s s\n' \
    "$name" "$arch" "$suite" "$arch" "$pyver" "$gcc" "$cython" "${need:-?}" "$(($(date +%s) - t0))" >&2
printf '%s\n' "$name"
