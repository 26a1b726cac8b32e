#!/bin/sh
# packaging/build-deb.sh - step two of the .deb build: assemble the package
# OFFLINE from a wheelhouse (fetch-wheels.sh) with plain dpkg-deb.
#
# No debhelper, no dh-virtualenv: the package ships the wheels, and its
# postinst builds the private venv under /opt/edge-agent on the gateway from
# them (--no-index), because a venv is tied to its absolute path and to the
# target's own Python. What the package holds:
#   /opt/edge-agent/wheels/             the wheels + requirements.txt (sha256 pins)
#   /usr/bin/edge-agent                 -> /opt/edge-agent/venv/bin/edge-agent
#   /etc/edge-agent/agent.toml          conffile, from packaging/agent.toml
#   /lib/systemd/system/edge-agent.service
#   /usr/share/doc/edge-agent/          README.Debian, copyright
#   DEBIAN/ postinst prerm postrm       from packaging/debian/
#
# Usage: packaging/build-deb.sh --arch amd64|arm64 [--pyver 3.11]
#            [--wheelhouse DIR] [--out DIR] [--revision N] [--compress xz|gzip|none]
#   --wheelhouse  default packaging/wheelhouse/ARCH-cpPYVER (fetch-wheels.sh's)
#   --out         default packaging/out
#   --compress    none is for the test suite (speed); releases use xz
# Prints the path of the .deb on its last line.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prog=build-deb
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
wheelhouse=""
out="$here/out"
revision=1
compress=xz
maintainer=${DEB_MAINTAINER:-"edge-agent maintainers <edge-agent@localhost>"}

while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --pyver) pyver=${2:?--pyver needs a value}; shift 2 ;;
        --wheelhouse) wheelhouse=${2:?--wheelhouse needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        --revision) revision=${2:?--revision needs a value}; shift 2 ;;
        --compress) compress=${2:?--compress needs a value}; shift 2 ;;
        *) die "unknown argument: $1" ;;
    esac
done

check_target
case "$compress" in
    xz|gzip|none) ;;
    *) die "--compress must be xz, gzip or none" ;;
esac
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (apt-get install dpkg-dev)"
[ -n "$wheelhouse" ] || wheelhouse="$here/wheelhouse/$arch-cp$cpyver"
[ -d "$wheelhouse" ] || die "no wheelhouse at $wheelhouse: run fetch-wheels.sh --arch $arch first"

# The version comes from the code (agent.__version__), the one place it lives.
version=$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$top/agent/__init__.py")
[ -n "$version" ] || die "cannot read __version__ from agent/__init__.py"
# PEP 440 pre-releases sort before the release; in Debian only "~" does that
# (0.2.0rc1 -> 0.2.0~rc1).
upstream=$(printf '%s' "$version" | sed 's/\(a\|b\|rc\|\.dev\)\([0-9]\)/~\1\2/')
deb_version="$upstream-$revision"

# -- the agent's own wheel: compiled for this target, or pure ----------------------
# Compiled (build-wheel.sh): cpXY-cpXY-linux_MACHINE, built in the target's
# Debian root, holding the extension for this CPU and CPython. Pure: py3-none-any
# with no extension at all. Anything else (the other architecture's extension,
# a "pure" wheel with a build machine's .so inside) would fail or fall back to
# Python only on the gateway, so it fails here.
agent_whl=""
for whl in "$wheelhouse"/edge_agent-*.whl; do
    [ -f "$whl" ] || continue
    [ -z "$agent_whl" ] || die "$wheelhouse has more than one edge_agent wheel: $(basename "$agent_whl"), $(basename "$whl")"
    agent_whl=$whl
done
[ -n "$agent_whl" ] || die "$wheelhouse has no edge_agent-$version wheel (the agent's own wheel)"
agent_name=$(basename "$agent_whl")
# The wheel's file list; python3 because it is on every machine that builds wheels.
members=$(python3 -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' \
    "$agent_whl") || die "$agent_name: not a readable wheel (zip)"
so="agent/_speedups.cpython-$cpyver-$machine-linux-gnu.so"
agent_tags=${agent_name#"edge_agent-$version-"}
agent_tags=${agent_tags%.whl}
case "$agent_tags" in
    py3-none-any)
        case "$members" in
            *.so*) die "$agent_name: a pure wheel with a compiled file inside: $(printf '%s\n' "$members" | grep -F .so | head -n 1)" ;;
        esac
        agent_core="pure-Python ingest path (no compiled core in the agent's wheel)"
        ;;
    "cp$cpyver-cp$cpyver-linux_$machine")
        printf '%s\n' "$members" | grep -qxF "$so" || die "$agent_name has no $so"
        agent_core="compiled ingest core ($so)"
        ;;
    *-linux_*)
        die "$agent_name: the agent's compiled wheel is built for ${agent_tags%%-linux_*} on ${agent_tags##*-linux_}, not for cp$cpyver on $arch ($machine)"
        ;;
    *)
        die "$agent_name: the agent's wheel must be edge_agent-$version-py3-none-any.whl (pure) or edge_agent-$version-cp$cpyver-cp$cpyver-linux_$machine.whl (compiled for $arch)"
        ;;
esac

# -- check the wheelhouse: every wheel must run on the target ------------------
min_glibc=17
count=0
for whl in "$wheelhouse"/*.whl; do
    [ -f "$whl" ] || continue
    name=$(basename "$whl" .whl)
    # name-version[-build]-python-abi-platform (PEP 427); the last three count.
    plat=${name##*-}; rest=${name%-*}
    abi=${rest##*-}; rest=${rest%-*}
    py=${rest##*-}
    case "$py" in
        py3*|py2.py3|cp3*) ;;
        *) die "$name: python tag $py does not run on CPython $pyver" ;;
    esac
    # A C extension is built for one CPython minor (cp311) unless it uses the
    # stable ABI (abi3); pure wheels say none.
    case "$abi" in
        none|abi3|"cp$cpyver") ;;
        *) die "$name: ABI $abi does not run on CPython $pyver" ;;
    esac
    case "$plat" in
        any) ;;
        # Only our own wheel, checked above, may be tagged linux_: a local build
        # in the target's root, which needs no newer glibc than the target's.
        "linux_$machine") [ "$whl" = "$agent_whl" ] || die "$name: platform $plat is not a manylinux tag" ;;
        *"_$machine"*)
            # The oldest glibc any of its tags needs (a wheel tagged
            # manylinux_2_17.manylinux_2_28 runs on 2.17): the package must
            # depend on the newest such minimum over all wheels.
            need=$(printf '%s\n' "$plat" | tr . '\n' |
                sed -n -e 's/^manylinux1_.*/5/p' -e 's/^manylinux2010_.*/12/p' \
                    -e 's/^manylinux2014_.*/17/p' -e 's/^manylinux_2_\([0-9]*\)_.*/\1/p' |
                sort -n | head -n 1)
            [ -n "$need" ] || die "$name: platform $plat is not a manylinux tag"
            [ "$need" -gt "$min_glibc" ] && min_glibc=$need
            ;;
        *) die "$name: platform $plat is not $arch ($machine)" ;;
    esac
    count=$((count + 1))
done

# -- the package tree ----------------------------------------------------------
mkdir -p "$out"
tree=$(mktemp -d "$out/tree.XXXXXX")
trap 'rm -rf "$tree"' EXIT
chmod 0755 "$tree"  # mktemp's 0700 would become the mode of "./" in the archive
install -d -m 0755 "$tree/DEBIAN" "$tree/opt/edge-agent/wheels" "$tree/usr/bin" \
    "$tree/etc/edge-agent" "$tree/lib/systemd/system" "$tree/usr/share/doc/edge-agent"

for whl in "$wheelhouse"/*.whl; do
    [ -f "$whl" ] && install -m 0644 "$whl" "$tree/opt/edge-agent/wheels/"
done
# Pins with hashes: postinst installs with --require-hashes, so exactly these
# files (not a corrupted or substituted one) end up in the venv.
(
    cd "$tree/opt/edge-agent/wheels"
    for whl in *.whl; do
        [ -f "$whl" ] || continue
        base=${whl%.whl}
        dist=${base%%-*}; rest=${base#*-}; ver=${rest%%-*}
        sum=$(sha256sum "$whl" | cut -d' ' -f1)
        printf '%s==%s --hash=sha256:%s\n' "$dist" "$ver" "$sum"
    done
) > "$tree/opt/edge-agent/wheels/requirements.txt"

# Dangling until postinst has built the venv: dpkg ships symlinks as they are.
ln -s /opt/edge-agent/venv/bin/edge-agent "$tree/usr/bin/edge-agent"
install -m 0644 "$here/agent.toml" "$tree/etc/edge-agent/agent.toml"
install -m 0644 "$here/edge-agent.service" "$tree/lib/systemd/system/edge-agent.service"
install -m 0644 "$here/debian/README.Debian" "$here/debian/copyright" "$tree/usr/share/doc/edge-agent/"

for script in postinst prerm postrm; do
    sed -e "s/@PYVER@/$pyver/g" -e "s/@DEB_VERSION@/$deb_version/g" \
        "$here/debian/$script" > "$tree/DEBIAN/$script"
    chmod 0755 "$tree/DEBIAN/$script"
done
printf '/etc/edge-agent/agent.toml\n' > "$tree/DEBIAN/conffiles"

# Installed-Size counts the shipped files only; the venv postinst builds from
# them adds about as much again (the arm smoke run reports both).
size_kib=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
# python$PYVER (not python3 >= ...): the wheels are cp$cpyver builds, and a
# Debian release that moves python3 to another minor must not leave the venv
# without its interpreter. python$PYVER-venv brings ensurepip (offline pip).
# procps: /bin/kill for ExecReload. libc6: what the manylinux wheels need.
cat > "$tree/DEBIAN/control" <<EOF
Package: edge-agent
Version: $deb_version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size_kib
Depends: python$pyver, python$pyver-venv, libc6 (>= 2.$min_glibc), procps
Section: net
Priority: optional
Description: substation gateway agent: meter events to the head-end by priority
 Receives meter events from collectors over ZeroMQ, classifies them
 (critical, high, normal, low) and publishes them upstream in strict class
 order, with a bounded memory budget and spill files on disk, so that no
 accepted event is lost by a slow head-end, a brownout or a restart.
 .
 Runs from a private virtual environment under /opt/edge-agent, built at
 install time from the wheels shipped in this package (no network needed).
EOF

deb="$out/edge-agent_${deb_version}_$arch.deb"
# --root-owner-group: every file root:root without fakeroot.
dpkg-deb --root-owner-group -Z"$compress" --build "$tree" "$deb" >/dev/null
printf 'build-deb: %s wheels, %s KiB, libc6 >= 2.%s, python%s\n' \
    "$count" "$size_kib" "$min_glibc" "$pyver" >&2
printf 'build-deb: %s: %s\n' "$agent_name" "$agent_core" >&2
printf '%s\n' "$deb"
