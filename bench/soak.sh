#!/usr/bin/env bash
# `make soak`: the ways a sandbox dies badly, CYCLES times each, counting after every cycle what
# is left on the host: processes (owners, monitors, shims, QEMU), mounts, sockets, state
# directories, cgroups and taps. The goal is 0 of each after every cycle.
#   kill-qemu    create, start, kill -9 QEMU, wait until stopped, delete
#   kill-owner   create, start, kill -9 the sandbox owner, delete
#   force-create delete --force at a random moment while create runs
#   ctr-kill     ctr run -d under io.containerd.vessel.v2, ctr task kill -9, delete
# usage: bench/soak.sh VESSEL KERNEL INITRD [CYCLES]
set -uo pipefail
vessel=$(readlink -f "$1") kernel=$(readlink -f "$2") initrd=$(readlink -f "$3") cycles=${4:-100}
here=$(cd "$(dirname "$0")/.." && pwd)
scripts/install-deps.sh containerd skopeo umoci busybox-static >/dev/null
t=$(mktemp -d /tmp/vessel-soak.XXXXXX)
root=$t/state-root
. "$here/bench/containerd-env.sh"
cleanup() {
    containerd_env_stop "$t"
    for id in $(ls "$root" 2>/dev/null); do "$vessel" --root "$root" delete --force "$id" >/dev/null 2>&1; done
    rm -rf "$t"
}
trap cleanup EXIT

printf '[hypervisor]\nkernel = "%s"\ninitrd = "%s"\nmemory_mib = 256\n' "$kernel" "$initrd" >"$t/soak.toml"
export VESSEL_CONFIG=$t/soak.toml
v() { "$vessel" --root "$root" "$@"; }
"$here/.build/debug/vessel-dev" bundle "$t/bundle" -- sleep 100000 >/dev/null

# A sandbox's directory: /run/vessel-sandboxes/ + FNV-1a 64 of "ROOT/ID" (SandboxPaths), so only
# the soak's own sandboxes count even while other Vessel users run.
sandbox_dir() {
    python3 -c 'import sys
h = 0xcbf29ce484222325
for b in sys.argv[1].encode(): h = ((h ^ b) * 0x100000001b3) % (1 << 64)
print("/run/vessel-sandboxes/%x" % h)' "$1"
}

# What cycle $2 of scenario $1 may have left behind, as "kind=count" words.
leftovers() {
    local id=soak-$2 dirs procs mounts sockets states cgroups taps
    dirs="$(sandbox_dir "$root/$id") $(sandbox_dir "/run/vessel-containerd/default/$id")"
    procs=0
    for pid in $(pgrep -f -- "--root $root |containerd-shim-vessel-v2.*-id $id|vessel-sandboxes/" || true); do
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        [[ $cmdline == *"--root $root "* || $cmdline =~ -id\ $id( |$) ]] && { procs=$((procs + 1)); continue; }
        for d in $dirs; do [[ $cmdline == *"$d"* ]] && procs=$((procs + 1)); done
    done
    mounts=0 sockets=0 states=0
    for d in $dirs "$root/$id" "$t/state/io.containerd.runtime.v2.task/default/$id"; do
        mounts=$((mounts + $(grep -c -F " $d" /proc/self/mountinfo || true)))
        sockets=$((sockets + $(find "$d" -type s 2>/dev/null | wc -l)))
        [[ -e $d ]] && states=$((states + 1))
    done
    cgroups=$(find /sys/fs/cgroup -mindepth 1 -maxdepth 4 -type d -name "$id" 2>/dev/null | wc -l)
    taps=$(ip -o link show 2>/dev/null | grep -c vtap || true)
    echo "processes=$procs mounts=$mounts sockets=$sockets states=$states cgroups=$cgroups taps=$taps"
}

json_field() { sed -n "s/.*\"$2\" *: *\([0-9]*\).*/\1/p" "$1" | head -1; }
record() { echo "$(sandbox_dir "$root/$1")/sandbox.json"; }
wait_status() { # id status: until `vessel state` says so, up to 60 s
    for _ in $(seq 300); do v state "$1" 2>/dev/null | grep -q "\"status\" *: *\"$2\"" && return 0; sleep 0.2; done
    return 1
}

kill_qemu() {
    v create --bundle "$t/bundle" "soak-$1" && v start "soak-$1" || return 1
    kill -9 "$(json_field "$(record "soak-$1")" qemuPid)"
    wait_status "soak-$1" stopped && v delete "soak-$1"
}

kill_owner() {
    v create --bundle "$t/bundle" "soak-$1" && v start "soak-$1" || return 1
    kill -9 "$(json_field "$(record "soak-$1")" ownerPid)"
    v delete "soak-$1" || v delete --force "soak-$1"
}

force_create() {
    v create --bundle "$t/bundle" "soak-$1" >/dev/null 2>&1 &
    local create=$!
    sleep "$(awk -v s="$1" 'BEGIN { srand(s); printf "%.1f", rand() * 5 }')"
    v delete --force "soak-$1" >/dev/null 2>&1
    wait "$create"
    v delete --force "soak-$1" >/dev/null 2>&1
    return 0
}

ctr_kill() {
    local c=(ctr -a "$t/c.sock" -n default)
    "${c[@]}" run -d --runtime io.containerd.vessel.v2 docker.io/library/bench:1 "soak-$1" >/dev/null || return 1
    for _ in $(seq 300); do "${c[@]}" task ls | grep -q "soak-$1 .*RUNNING" && break; sleep 0.2; done
    "${c[@]}" task kill -s SIGKILL "soak-$1"
    for _ in $(seq 300); do "${c[@]}" task ls | grep -q "soak-$1 .*STOPPED" && break; sleep 0.2; done
    "${c[@]}" task delete "soak-$1" >/dev/null && "${c[@]}" container delete "soak-$1"
}

containerd_env_start "$t" "$vessel" "$kernel" "$initrd" >/dev/null
status=0
for scenario in ${SOAK_SCENARIOS:-kill_qemu kill_owner force_create ctr_kill}; do
    failures=0 dirty=0 worst=""
    start=$SECONDS
    for i in $(seq "$cycles"); do
        if ! "$scenario" "$i" >>"$t/$scenario.log" 2>&1; then failures=$((failures + 1)); fi
        # Let the last process of a torn-down sandbox finish exiting before counting.
        for _ in $(seq 50); do [[ $(leftovers "$scenario" "$i") =~ ^(processes=0 mounts=0 sockets=0 states=0 cgroups=0 taps=0)$ ]] && break; sleep 0.2; done
        left=$(leftovers "$scenario" "$i")
        if [[ ! $left =~ ^(processes=0 mounts=0 sockets=0 states=0 cgroups=0 taps=0)$ ]]; then
            dirty=$((dirty + 1)) worst=$left
            echo "soak: $scenario cycle $i left $left" >&2
        fi
    done
    echo "soak: $scenario: $cycles cycles in $((SECONDS - start)) s, $failures failed, $dirty left something${worst:+ (last: $worst)}"
    [[ $failures -eq 0 && $dirty -eq 0 ]] || { status=1; cp "$t/$scenario.log" "${SOAK_LOGS:-/tmp}/soak-$scenario.log"; }
done
exit $status
