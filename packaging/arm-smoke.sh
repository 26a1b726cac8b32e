#!/bin/bash
# packaging/arm-smoke.sh - proof on ARM (issue 4): build the arm64 .deb,
# install it into an arm64 Debian bookworm root made with debootstrap, run the
# agent there under qemu-user emulation, and check events in = events out.
#
# NOT part of the test suite: it needs root, the network (PyPI for the wheels,
# the Debian mirror for debootstrap and the package's dependencies) and a few
# minutes. What it does, in order:
#   1. checks that the kernel runs aarch64 binaries (binfmt_misc + qemu-user-static)
#   2. packaging/fetch-wheels.sh + build-deb.sh --arch arm64; the agent's wheel
#      carries the compiled ingest core, built in a bookworm arm64 root under
#      the same emulation (build-wheel.sh; its root is cached beside ours)
#   3. a minimal bookworm root: debootstrap --foreign, then --second-stage
#      inside it under emulation (cached in $SMOKE_CACHE, reused next time)
#   4. a throw-away copy of it: dpkg -i the .deb (fails on the missing python3.11:
#      a minimal root has no Python), then apt-get -f install pulls the
#      dependencies from the mirror and configures the package, whose postinst
#      builds the venv from the shipped wheels (offline, --no-index)
#   5. runs the ExecStart command by hand, as the edge-agent user, without
#      systemd (NOTIFY_SOCKET unset), on a loopback config (ipc:// + HTTP on
#      127.0.0.1:0), then packaging/smoke_client.py with the agent's own venv
#      python: events in = events out, headers, rejected frames, the endpoint
#      and which ingest core runs: it must be the compiled one (below)
#   6. idle RSS and CPU of the agent over 10 s; installed size
#   7. stop/start with events parked in the spill files: none lost
#
# Usage (as root): packaging/arm-smoke.sh [--arch arm64|amd64] [--events N]
#                      [--agent-wheel compiled|pure]
#   --arch amd64 runs the same steps natively: the real (non-emulated) RSS/CPU.
#   --agent-wheel pure packages the agent without its compiled ingest core
#            (fetch-wheels.sh); the run then expects the Python path instead.
# The ingest core that runs is read, in this order, from the agent's start-up
# log line ("ingest path compiled (...; burst reader compiled)"), from the
# endpoint's agent.ingest_path, or, when the running agent reports neither (an
# agent older than issue 10's loop integration), from agent.fastpath.ACTIVE
# imported by the venv's python as the edge-agent user (what the agent would
# pick). Anything but the expected core fails the run.
# Environment: SMOKE_SRC (the source tree the agent wheel is built from;
# default this checkout), MIRROR (default: the first URIs: of this host's Debian apt
# sources), SMOKE_CACHE (default /var/tmp/edge-agent-smoke), KEEP_ROOT=1 keeps
# the installed root for inspection.
# Output: everything is also written to packaging/out/arm-smoke-ARCH.txt, the
# agent's own log to packaging/out/arm-smoke-ARCH.agent.log.
set -eu -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
prog=arm-smoke
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
arch=arm64
agent_wheel=compiled
suite=bookworm
pyver=3.11
events=20000
parked=5000
cache=${SMOKE_CACHE:-/var/tmp/edge-agent-smoke}

die() { printf 'arm-smoke: FAIL: %s\n' "$*" >&2; exit 1; }
step() { printf '\n== [%4ss] %s\n' "$SECONDS" "$*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=${2:?}; shift 2 ;;
        --events) events=${2:?}; shift 2 ;;
        --agent-wheel) agent_wheel=${2:?}; shift 2 ;;
        *) die "unknown argument: $1" ;;
    esac
done
case "$arch" in
    arm64) qemu_name="qemu-aarch64" ;;
    amd64) qemu_name="" ;;
    *) die "--arch must be arm64 or amd64" ;;
esac
case "$agent_wheel" in
    compiled) expect_core=compiled ;;
    pure) expect_core=python ;;
    *) die "--agent-wheel must be compiled or pure" ;;
esac
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mount need it)"

out="$here/out"
mkdir -p "$out"
report="$out/arm-smoke-$arch.txt"
agent_log="$out/arm-smoke-$arch.agent.log"
: > "$agent_log"
exec > >(tee "$report") 2>&1

base="$cache/$suite-$arch"
root="$cache/run-$arch"
agent_pid=""

# -- cleanup: stop our agent, unmount, and only then delete the copy ------------
mounted_under() { awk -v r="$1" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/self/mounts; }
cleanup() {
    if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
        kill -TERM "$agent_pid" 2>/dev/null || true
        wait "$agent_pid" 2>/dev/null || true
    fi
    for m in $(mounted_under "$root" | sort -r); do umount "$m" || umount -l "$m" || true; done
    if [ -n "$(mounted_under "$root")" ]; then
        echo "arm-smoke: still mounted under $root, not deleting it" >&2
    elif [ "${KEEP_ROOT:-0}" != 1 ]; then
        rm -rf "$root"
    fi
}
trap cleanup EXIT

step "edge-agent smoke run: $arch, Debian $suite, python$pyver; host $(uname -m), $(nproc) cores"
date -u '+%Y-%m-%d %H:%M:%S UTC'

# -- 1. emulation ------------------------------------------------------------------
if [ -n "$qemu_name" ] && [ "$(uname -m)" != aarch64 ]; then
    step "1. binfmt_misc: can this kernel run aarch64 binaries?"
    why=$(can_run_arch "$arch" 2>&1) || die "$why"
    sed 's/^/  /' "/proc/sys/fs/binfmt_misc/$qemu_name"
fi

# -- 2. the package ------------------------------------------------------------------
step "2. build the $arch package (fetch-wheels.sh, then build-deb.sh offline)"
SMOKE_CACHE=$cache "$here/fetch-wheels.sh" --arch "$arch" --pyver "$pyver" \
    --agent-wheel "$agent_wheel" --src "${SMOKE_SRC:-$(dirname "$here")}"
deb=$("$here/build-deb.sh" --arch "$arch" --pyver "$pyver")
ls -l "$deb"
dpkg-deb --field "$deb" Package Version Architecture Depends Installed-Size | sed 's/^/  /'

# -- 3. the Debian root ----------------------------------------------------------------
if [ ! -f "$base/.smoke-base-ok" ]; then
    step "3. debootstrap a minimal $suite $arch root into $base (cached for next time)"
    bootstrap_root "$base" "$arch" "$suite"
else
    step "3. reusing the $suite $arch root in $base"
fi
chroot "$base" uname -m | sed 's/^/  uname -m inside the root: /'

# -- 4. install ---------------------------------------------------------------------
step "4. install the package into a fresh copy of the root"
rm -rf "$root"
cp -a "$base" "$root"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# Don't let any package start a service in the chroot.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
cp "$deb" "$root/tmp/"
cp "$here/smoke_client.py" "$root/tmp/"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }

in_root apt-get update -q >/dev/null
echo "-- dpkg -i (a minimal root has no python3.11 yet: dependency errors expected)"
if in_root dpkg -i "/tmp/$(basename "$deb")" > "$out/arm-smoke-$arch.dpkg.log" 2>&1; then
    echo "  dpkg -i: installed without missing dependencies"
else
    grep -E 'depends on|not installed' "$out/arm-smoke-$arch.dpkg.log" | sed 's/^/  /' | head -n 6
fi
echo "-- apt-get -f install: dependencies from the mirror, then our postinst builds the venv"
t0=$SECONDS
in_root apt-get -f install -y -q --no-install-recommends > "$out/arm-smoke-$arch.apt.log" 2>&1 ||
    { tail -n 30 "$out/arm-smoke-$arch.apt.log"; die "apt-get -f install failed"; }
echo "  took $((SECONDS - t0)) s (download, unpack and configure python3.11, then our postinst${qemu_name:+, all under emulation})"
# shellcheck disable=SC2016 # ${...} is dpkg-query's format syntax, not the shell's
status=$(in_root dpkg-query -W -f='${Status} ${Version} ${Architecture}' edge-agent)
echo "  dpkg-query: $status"
case "$status" in "install ok installed "*) ;; *) die "package not installed: $status" ;; esac

# shellcheck disable=SC2016 # as above
installed_kib=$(in_root dpkg-query -W -f='${Installed-Size}' edge-agent)
opt_kib=$(du -sk "$root/opt/edge-agent" | cut -f1)
venv_dir=$(readlink "$root/opt/edge-agent/venv")
venv_kib=$(du -sk "$root/opt/edge-agent/$venv_dir" | cut -f1)
echo "  Installed-Size (package files): $installed_kib KiB"
echo "  /opt/edge-agent on disk (wheels + venv $venv_dir): $opt_kib KiB, of which venv $venv_kib KiB"
in_root edge-agent --version | sed 's/^/  /'
in_root /opt/edge-agent/venv/bin/python -c \
    'import platform, zmq; from importlib.metadata import distributions as d
print("  python", platform.python_version(), platform.machine(), "libzmq", zmq.zmq_version())
print("  venv:", ", ".join(sorted(f"{x.name} {x.version}" for x in d())))'
in_root edge-agent check-config --config /etc/edge-agent/agent.toml | sed 's/^/  shipped config: /'
in_root getent passwd edge-agent | sed 's/^/  user: /'
stat -c '  state dir: %A uid %u gid %g %n' "$root/var/lib/edge-agent"
in_root sh -c 'ls -l /usr/bin/edge-agent; ls -l /opt/edge-agent/' | sed 's/^/  /'

# -- 5. run it ----------------------------------------------------------------------
step "5. start the agent as systemd's ExecStart would (by hand, as edge-agent, no NOTIFY_SOCKET)"
cat > "$root/etc/edge-agent/smoke.toml" <<'EOF'
# arm-smoke.sh: loopback only; production defaults otherwise, but 64 MiB of
# spill files instead of 2 GiB (zero-filling 2 GiB under emulation takes long).
[agent]
id = "arm-smoke"
[ingest]
bind = ["ipc:///run/edge-agent/in"]
priority_bind = ["ipc:///run/edge-agent/lane"]
[upstream]
bind = ["ipc:///run/edge-agent/out"]
[spill]
dir = "/var/lib/edge-agent/spill"
max_bytes = 67108864
[http]
bind = "127.0.0.1:0"
EOF
in_root edge-agent check-config --config /etc/edge-agent/smoke.toml | sed 's/^/  /'
uid=$(in_root id -u edge-agent)
gid=$(in_root id -g edge-agent)
# What StateDirectory= and RuntimeDirectory= would create.
install -d -o "$uid" -g "$gid" -m 0700 "$root/var/lib/edge-agent/spill"
install -d -o "$uid" -g "$gid" -m 0750 "$root/run/edge-agent"

url=""
start_agent() {
    local before t0
    before=$(grep -c 'ready:' "$agent_log" || true)
    t0=$SECONDS
    chroot --userspec="$uid:$gid" "$root" /usr/bin/env -i PATH=/usr/bin:/bin \
        HOME=/var/lib/edge-agent LC_ALL=C.UTF-8 PYTHONFAULTHANDLER=1 PYTHONDONTWRITEBYTECODE=1 \
        /usr/bin/edge-agent run --config /etc/edge-agent/smoke.toml 2>>"$agent_log" &
    agent_pid=$!
    while [ "$(grep -c 'ready:' "$agent_log" || true)" -le "$before" ]; do
        kill -0 "$agent_pid" 2>/dev/null || { cat "$agent_log"; die "the agent exited during start-up"; }
        [ $((SECONDS - t0)) -lt 300 ] || die "no ready line after 300 s"
        sleep 0.2
    done
    url=$(sed -n 's|.*ready: .* \(http://[^/]*\)/.*|\1|p' "$agent_log" | tail -n 1)
    echo "  pid $agent_pid ready after ~$((SECONDS - t0)) s, endpoint $url"
}
stop_agent() {
    local t0 rc
    t0=$SECONDS
    kill -TERM "$agent_pid"
    rc=0
    wait "$agent_pid" || rc=$?
    agent_pid=""
    echo "  SIGTERM -> exit status $rc after ~$((SECONDS - t0)) s"
    [ "$rc" = 0 ] || die "the agent exited $rc on SIGTERM"
}
client() { in_root /opt/edge-agent/venv/bin/python /tmp/smoke_client.py "$@" \
    --ingest ipc:///run/edge-agent/in --lane ipc:///run/edge-agent/lane \
    --upstream ipc:///run/edge-agent/out --url "$url"; }

# Which ingest core runs (see the header): the log line, else the endpoint,
# else what the venv's python imports as the service's user. Sets $core and
# $core_from; fails the run unless it is $expect_core.
core=""
core_from=""
check_ingest_core() {
    local line reader
    line=$(grep -E 'ingest path (compiled|python)' "$agent_log" | tail -n 1 || true)
    if [ -n "$line" ]; then
        core=$(printf '%s\n' "$line" | sed -n 's/.*ingest path \(compiled\|python\).*/\1/p')
        reader=$(printf '%s\n' "$line" | sed -n 's/.*burst reader \([a-z/]*\).*/\1/p')
        core_from="the start-up log line (burst reader ${reader:-?})"
        echo "  log: ${line#*agent.loop: }"
        # A compiled scanner with a Python burst reader (libzmq's functions not
        # found in this process) is half the speed-up: not the compiled path.
        case "$reader" in *python*) [ "$expect_core" = python ] || core="compiled scanner, python burst reader" ;; esac
    else
        core=$(in_root /opt/edge-agent/venv/bin/python -c 'import json, sys, urllib.request
doc = json.load(urllib.request.urlopen(sys.argv[1] + "/api/v1/gateway/backpressure", timeout=30))
print(doc.get("agent", {}).get("ingest_path", ""))' "$url") || die "GET $url/api/v1/gateway/backpressure failed"
        core_from="the endpoint's agent.ingest_path"
    fi
    if [ -z "$core" ]; then
        # This agent does not report it yet: ask the installed code itself, as
        # the service's user, with a PULL socket as the loop would make one.
        core=$(chroot --userspec="$uid:$gid" "$root" /usr/bin/env -i PATH=/usr/bin:/bin \
            HOME=/var/lib/edge-agent LC_ALL=C.UTF-8 /opt/edge-agent/venv/bin/python -c '
import sys
import zmq
import agent.fastpath as f
s = zmq.Context.instance().socket(zmq.PULL)
kind = f.make_burst_reader(s).kind
s.close(0)
print(f.ACTIVE if kind == f.ACTIVE else f.ACTIVE + " scanner, " + kind + " burst reader")
print("  fastpath:", f.describe(), file=sys.stderr)') ||
            die "the venv cannot import agent.fastpath"
        core_from="agent.fastpath.ACTIVE in the venv, as edge-agent (the running agent does not report it yet)"
    fi
    echo "  ingest core: $core (from $core_from)"
    [ "$core" = "$expect_core" ] ||
        die "the agent runs the '$core' ingest path, not the $expect_core one (--agent-wheel $agent_wheel)"
}

start_agent
ps -o pid,user,args -p "$agent_pid" | sed 's/^/  /'
echo "-- which ingest core runs (expected: $expect_core)"
check_ingest_core

step "6. events in = events out: $events events of four classes + 3 bad frames"
result=$(client roundtrip --events "$events") || { echo "$result"; die "roundtrip failed"; }
echo "  $result"
echo "-- edge-agent status (the endpoint answering, as a technician sees it)"
in_root edge-agent status --url "$url" | sed 's/^/  /'

step "7. idle footprint over 10 s"
sleep 2  # let the burst's last timers run out: measure idleness, not its tail
ticks=$(getconf CLK_TCK)
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$agent_pid/stat")
t1=$(date +%s.%N)
sleep 10
read -r u2 s2 < <(awk '{print $14, $15}' "/proc/$agent_pid/stat")
t2=$(date +%s.%N)
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$agent_pid/status")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$agent_pid/status")
threads=$(awk '/^Threads/ {print $2}' "/proc/$agent_pid/status")
cpu=$(awk -v d=$((u2 + s2 - u1 - s1)) -v hz="$ticks" -v a="$t1" -v b="$t2" \
    'BEGIN {printf "%.2f", 100 * d / hz / (b - a)}')
if [ -n "$qemu_name" ]; then
    note="under qemu-user: RSS includes the emulator and its translation cache, CPU the translation; both are upper bounds for a real ARM core"
else
    note="native"
fi
echo "  idle RSS $((rss / 1024)) MiB ($rss KiB), peak RSS during the run $((hwm / 1024)) MiB, threads $threads"
echo "  idle CPU ${cpu}% of one core over $(awk -v a="$t1" -v b="$t2" 'BEGIN {printf "%.1f", b - a}') s ($note)"

step "8. stop/start with $parked events parked on disk (no subscriber while they arrive)"
result=$(client send --events "$parked" --tag parked) || { echo "$result"; die "send failed"; }
echo "  $result"
stop_agent
grep 'stopped:' "$agent_log" | tail -n 1 | sed 's/^/  log: /'
find "$root/var/lib/edge-agent/spill" -type f -printf '  %M uid %U %10s %f\n' | sort -k4
start_agent
grep 'spill recovery' "$agent_log" | tail -n 1 | sed 's/^/  log: /'
result=$(client receive --events "$parked" --tag parked) || { echo "$result"; die "receive failed"; }
echo "  $result"
stop_agent

step "summary ($arch)"
echo "  PASS: installed from the .deb, $events events in = out, $parked parked events survived a restart"
echo "  ingest core: $core (from $core_from)"
echo "  installed size: Installed-Size $installed_kib KiB; /opt/edge-agent with the venv $opt_kib KiB"
echo "  idle: RSS $((rss / 1024)) MiB, CPU ${cpu}% ($note)"
echo "  total time $SECONDS s"
echo "-- agent log (stderr)"
sed 's/^/  /' "$agent_log"
