# shellcheck shell=sh
# packaging/lib.sh - what build-deb.sh and fetch-wheels.sh share: the target
# options (--arch, --pyver), their validation, and die().
#
# Sourced, not run: the caller sets $here (its own directory) and $prog (its
# name for messages: "build-deb: ..."), then `. "$here/lib.sh"` before parsing
# its arguments. It parses --arch and --pyver itself (a function cannot shift
# the caller's arguments) and calls check_target once they are parsed.

# $here and $prog are the caller's; top is read by the caller, not here.
# shellcheck disable=SC2034,SC2154
top=$(dirname "$here")
arch=""
pyver="3.11"

# shellcheck disable=SC2154
die() { printf '%s: %s\n' "$prog" "$*" >&2; exit 2; }

# --arch -> machine (the target's uname -m, as in wheel platform tags), and
# --pyver -> cpyver (3.11 -> 311, as in cp311 wheel tags); exits 2 on bad values.
check_target() {
    case "$arch" in
        amd64) machine=x86_64 ;;
        arm64) machine=aarch64 ;;
        *) die "--arch must be amd64 or arm64, not '${arch}'" ;;
    esac
    case "$pyver" in
        3.[0-9]|3.[0-9][0-9]) ;;
        *) die "--pyver must look like 3.11, not '${pyver}'" ;;
    esac
    # shellcheck disable=SC2034
    cpyver=$(printf '%s' "$pyver" | tr -d .)
}

# -- what build-wheel.sh and arm-smoke.sh share: a clean source copy and the
# -- Debian root of the target (POSIX sh; callers may redefine die afterwards)

# clean_copy SRC DEST: the source tree without VCS data, venvs, build outputs
# and caches. setuptools reuses ./build/lib, so a module deleted from agent/
# but still there would end up in a wheel; a host-built agent/_speedups*.so
# (make test's in-place build) would too, into the wrong architecture's wheel.
clean_copy() {
    mkdir -p "$2"
    tar -C "$1" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='./*.egg-info' \
        --exclude=./var --exclude=./packaging/out --exclude=./packaging/wheelhouse \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis \
        --exclude=.mypy_cache --exclude=.ruff_cache --exclude='*.so' --exclude='./agent/_speedups.c' \
        -cf - . | tar -C "$2" -xf -
}

# debian_mirror: $MIRROR, else the first Debian mirror in this host's apt sources.
debian_mirror() {
    if [ -z "${MIRROR:-}" ]; then
        MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        [ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
        [ -n "$MIRROR" ] || die "no Debian mirror in this host's apt sources: set MIRROR"
    fi
    printf '%s\n' "$MIRROR"
}

# can_run_arch ARCH: true if this kernel runs ARCH's binaries, natively or
# through binfmt_misc + qemu-user-static (registered here if need be). Says why
# not on stderr otherwise. Needs root for the registration.
can_run_arch() {
    case "$1:$(uname -m)" in
        amd64:x86_64|arm64:aarch64) return 0 ;;
        arm64:*) qemu="qemu-aarch64" ;;
        amd64:*) qemu="qemu-x86_64" ;;
        *) echo "no emulator known for $1" >&2; return 1 ;;
    esac
    command -v "$qemu-static" >/dev/null 2>&1 ||
        { echo "$qemu-static missing: apt-get install qemu-user-static binfmt-support" >&2; return 1; }
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null ||
            { echo "cannot mount binfmt_misc on /proc/sys/fs/binfmt_misc (no privilege here?)" >&2; return 1; }
    fi
    if ! grep -qx enabled "/proc/sys/fs/binfmt_misc/$qemu" 2>/dev/null; then
        update-binfmts --enable "$qemu" >/dev/null 2>&1 ||
            { echo "cannot register $qemu with binfmt_misc (update-binfmts --enable $qemu failed)" >&2; return 1; }
    fi
    # Flag F: the kernel opened the interpreter at registration, so it works
    # inside a chroot without copying qemu into it.
    grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/$qemu" ||
        { echo "$qemu is registered without flag F: it would not run inside a chroot" >&2; return 1; }
}

# bootstrap_root DIR ARCH SUITE: a minimal Debian root (debootstrap --variant=
# minbase; the second stage runs under emulation for a foreign ARCH), with this
# host's apt suites (updates, security) when they are in deb822 form. Cached:
# DIR/.smoke-base-ok marks a finished one, reused as it is.
bootstrap_root() {
    [ -f "$1/.smoke-base-ok" ] && return 0
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing: apt-get install debootstrap"
    rm -rf "$1"
    mkdir -p "$(dirname "$1")"
    debootstrap --arch="$2" --foreign --variant=minbase "$3" "$1" "$(debian_mirror)" >/dev/null ||
        die "debootstrap --foreign of $3 $2 into $1 failed"
    chroot "$1" /debootstrap/debootstrap --second-stage >/dev/null ||
        die "debootstrap --second-stage in $1 failed (see $1/debootstrap/debootstrap.log)"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        cp /etc/apt/sources.list.d/debian.sources "$1/etc/apt/sources.list.d/"
        rm -f "$1/etc/apt/sources.list"
    fi
    touch "$1/.smoke-base-ok"
}
