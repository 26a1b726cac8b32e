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
