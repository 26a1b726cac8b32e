#!/bin/bash
# packaging/systemd-smoke.sh - the amd64 package under a real systemd (PID 1 of
# a systemd-nspawn container), to prove what a unit-file parse cannot: that
# the hardened unit lets the agent run (seccomp, namespaces, memory limits),
# and that READY=1, WATCHDOG=1, reload, stop, upgrade and purge behave.
#
# NOT part of the test suite (root, network for the build, ~2 minutes).
# It needs agent/loop.py to drive agent/notify.py: without READY=1 the
# Type=notify unit never becomes active and this run fails at step 3.
#
#   1. build the amd64 .deb (fetch-wheels.sh + build-deb.sh)
#   2. a bookworm amd64 root with systemd (debootstrap, cached); dpkg -i +
#      apt-get -f install in a chroot (no systemd there: postinst only enables)
#   3. boot it (systemd-nspawn -b --private-network): the agent must come up
#      as active (running) with a STATUS= text, i.e. after READY=1
#   4. events in = out over loopback (smoke_client.py, the agent's venv python)
#   5. systemctl reload: same main PID, still active
#   6. watchdog: SIGSTOP the agent; systemd must kill it (SIGABRT) and restart it
#   7. 5000 events parked by `systemctl stop`, then dpkg -i again (upgrade path:
#      new venv, restart), dpkg --purge (spill data must stay), dpkg -i, and
#      the 5000 events must come back out
#
# Usage (as root): packaging/systemd-smoke.sh
# Environment: SMOKE_SRC, MIRROR, SMOKE_CACHE as for arm-smoke.sh.
# Output: also written to packaging/out/systemd-smoke.txt.
set -eu -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
suite=bookworm
cache=${SMOKE_CACHE:-/var/tmp/edge-agent-smoke}
base="$cache/$suite-amd64-systemd"
root="$cache/run-systemd"
out="$here/out"
mkdir -p "$out"
exec > >(tee "$out/systemd-smoke.txt") 2>&1

die() { printf 'systemd-smoke: FAIL: %s\n' "$*" >&2; exit 1; }
step() { printf '\n== [%4ss] %s\n' "$SECONDS" "$*"; }
[ "$(id -u)" = 0 ] || die "run as root"
command -v systemd-nspawn >/dev/null || die "systemd-nspawn missing: apt-get install systemd-container"

nspawn_pid=""
mounted_under() { awk -v r="$1" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/self/mounts; }
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid"  # nspawn powers the container off cleanly
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    for m in $(mounted_under "$root" | sort -r); do umount "$m" || umount -l "$m" || true; done
    if [ -z "$(mounted_under "$root")" ] && [ "${KEEP_ROOT:-0}" != 1 ]; then rm -rf "$root"; fi
}
trap cleanup EXIT

step "1. build the amd64 package"
"$here/fetch-wheels.sh" --arch amd64 --src "${SMOKE_SRC:-$(dirname "$here")}" >/dev/null
deb=$("$here/build-deb.sh" --arch amd64)
echo "  $deb"

step "2. a $suite root with systemd; install the package"
if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$MIRROR" ] || die "no Debian mirror in this host's apt sources: set MIRROR"
fi
if [ ! -f "$base/.smoke-base-ok" ]; then
    rm -rf "$base"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus "$suite" "$base" "$MIRROR" >/dev/null
    touch "$base/.smoke-base-ok"
fi
rm -rf "$root"
cp -a "$base" "$root"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$deb" "$here/smoke_client.py" "$root/root/"
mount -t proc proc "$root/proc"
in_chroot() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
in_chroot apt-get update -q >/dev/null
in_chroot dpkg -i "/root/$(basename "$deb")" >/dev/null 2>&1 || true
in_chroot apt-get -f install -y -q --no-install-recommends >/dev/null
umount "$root/proc"
# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
in_chroot dpkg-query -W -f='  ${Package} ${Version} ${Status}\n' edge-agent

step "3. boot: systemd starts the enabled unit; active only after READY=1"
systemd-nspawn -D "$root" -b --private-network --register=no --keep-unit --console=passive \
    > "$out/systemd-smoke.console.log" 2>&1 &
nspawn_pid=$!
init=""
for _ in $(seq 100); do
    init=$(pgrep -P "$nspawn_pid" | head -n 1 || true)
    [ -n "$init" ] && nsenter -t "$init" -a systemctl is-system-running --wait >/dev/null 2>&1 && break
    sleep 0.3
done
[ -n "$init" ] || die "the container did not boot (see $out/systemd-smoke.console.log)"
in_ct() { nsenter -t "$init" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
show() { in_ct systemctl show -p "$1" --value edge-agent; }
wait_active() {
    for _ in $(seq 300); do
        [ "$(show ActiveState)" = active ] && [ "$(show SubState)" = running ] && return 0
        sleep 0.2
    done
    in_ct journalctl -u edge-agent --no-pager -n 40
    die "edge-agent is $(show ActiveState)/$(show SubState)"
}
wait_active
echo "  active (running); Type=$(show Type) WatchdogUSec=$(show WatchdogUSec) STATUS=\"$(show StatusText)\""
[ -n "$(show StatusText)" ] || die "no STATUS= text: READY=1 sent without status?"
pid=$(show MainPID)
echo "  MainPID $pid: $(in_ct grep -E '^(NoNewPrivs|Seccomp|CapEff):' "/proc/$pid/status" | tr -s '\t\n' '  ')"
in_ct systemd-analyze security edge-agent 2>/dev/null | tail -n 1 | sed 's/^/  /'

client() { in_ct /opt/edge-agent/venv/bin/python /root/smoke_client.py "$@" --agent-id "$(in_ct hostname)" \
    --ingest tcp://127.0.0.1:5557 --lane tcp://127.0.0.1:5559 --upstream tcp://127.0.0.1:5558 \
    --url http://127.0.0.1:8080; }

step "4. events in = events out under the hardened unit"
client roundtrip --events 20000 | sed 's/^/  /'

step "5. systemctl reload"
in_ct systemctl reload edge-agent
[ "$(show MainPID)" = "$pid" ] || die "reload changed the main PID"
wait_active
echo "  still active, same PID $pid, STATUS=\"$(show StatusText)\""

step "6. watchdog: freeze the loop (SIGSTOP)"
restarts=$(show NRestarts)
in_ct kill -STOP "$pid"
for _ in $(seq 150); do [ "$(show NRestarts)" -gt "$restarts" ] && break; sleep 0.2; done
[ "$(show NRestarts)" -gt "$restarts" ] || die "no restart within 30 s of SIGSTOP"
wait_active
in_ct journalctl -u edge-agent --no-pager -n 60 | grep -E 'Watchdog timeout|Killing process|Failed with result' | sed 's/^/  /'
echo "  restarted: MainPID $(show MainPID), NRestarts $(show NRestarts)"

step "7. stop with events parked, upgrade, purge, reinstall: nothing lost"
client send --events 5000 --tag parked | sed 's/^/  /'
in_ct systemctl stop edge-agent
echo "  stop: Result=$(show Result)"
in_ct journalctl -u edge-agent --no-pager -n 20 | grep 'stopped:' | tail -n 1 | sed 's/^/  /'
in_ct dpkg -i "/root/$(basename "$deb")" 2>&1 | grep -v '^(Reading' | sed 's/^/  /'
wait_active
in_ct ls /opt/edge-agent | tr '\n' ' ' | sed 's/^/  \/opt\/edge-agent: /'; echo
in_ct dpkg --purge edge-agent 2>&1 | grep -v '^(Reading' | sed 's/^/  /'
[ -d "$root/var/lib/edge-agent/spill" ] || die "purge deleted the spill dir"
[ ! -e "$root/opt/edge-agent" ] || die "purge left /opt/edge-agent"
in_ct dpkg -i "/root/$(basename "$deb")" >/dev/null 2>&1
wait_active
client receive --events 5000 --tag parked | sed 's/^/  /'

step "PASS (total $SECONDS s)"
