#!/usr/bin/env bash
# The containerd side of `make bench`, each number next to its baseline from the same run:
#   - `ctr run --rm IMAGE true` under io.containerd.vessel.v2 vs io.containerd.runc.v2 (medians);
#   - through CRI (our client, Tests/Callers/cri/cri.py): a pod's start (RunPodSandbox to its
#     first container running), a second container into the running pod (no boot), and the
#     pod's teardown (StopPodSandbox + RemovePodSandbox);
#   - host PSS of the pod's sandbox owner and its QEMU.
# usage: bench/containerd-bench.sh VESSEL KERNEL INITRD [COUNT]
set -euo pipefail
vessel=$(readlink -f "$1") kernel=$(readlink -f "$2") initrd=$(readlink -f "$3") count=${4:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
scripts/install-deps.sh containerd skopeo umoci busybox-static >/dev/null
t=$(mktemp -d /tmp/vessel-containerd-bench.XXXXXX)
cleanup() {
    containerd_env_stop "$t"
    rm -rf "$t"
}
trap cleanup EXIT

. "$here/bench/containerd-env.sh"
containerd_env_start "$t" "$vessel" "$kernel" "$initrd"

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

for runtime in runc vessel; do
    : >"$t/$runtime.ms"
    for i in $(seq "$count"); do
        start=$(date +%s%N)
        ctr -a "$t/c.sock" -n default run --rm --runtime "io.containerd.$runtime.v2" docker.io/library/bench:1 "$runtime-$i" true
        ms "$start" >>"$t/$runtime.ms"
    done
done
runc_ms=$(median <"$t/runc.ms") vessel_ms=$(median <"$t/vessel.ms")
awk -v r="$runc_ms" -v v="$vessel_ms" -v n="$count" \
    'BEGIN { printf "ctr run --rm true: vessel %d ms, runc %d ms: ratio %.1fx (medians of %d)\n", v, r, v / r, n }'

# CRI: a host-network pod (no CNI), two containers.
venv=${VESSEL_CACHE:-/var/cache/vessel}/python-cri
if ! "$venv/bin/python3" -c 'import grpc, grpc_tools' 2>/dev/null; then
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet grpcio grpcio-tools
fi
cri() { VESSEL_CRI_STUBS="$t/stubs" "$venv/bin/python3" "$here/Tests/Callers/cri/cri.py" --socket "$t/c.sock" "$@"; }
json() { "$venv/bin/python3" -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }
printf '{"metadata": {"name": "bench", "uid": "u", "namespace": "default"}, "log_directory": "%s",
  "linux": {"security_context": {"namespace_options": {"network": 2}}}}' "$t/logs" >"$t/pod.json"
for name in c1 c2; do
    printf '{"metadata": {"name": "%s"}, "image": {"image": "docker.io/library/bench:1"}, "log_path": "%s.log"}' \
        "$name" "$name" >"$t/$name.json"
done
: >"$t/pod.ms"; : >"$t/second.ms"; : >"$t/teardown.ms"; : >"$t/pss"
for i in $(seq "$count"); do
    start=$(date +%s%N)
    pod=$(cri runp --config "$t/pod.json" --runtime vessel | json pod_sandbox_id)
    c1=$(cri create "$pod" --config "$t/c1.json" --pod-config "$t/pod.json" | json container_id)
    cri start "$c1" >/dev/null
    ms "$start" >>"$t/pod.ms"
    start=$(date +%s%N)
    c2=$(cri create "$pod" --config "$t/c2.json" --pod-config "$t/pod.json" | json container_id)
    cri start "$c2" >/dev/null
    ms "$start" >>"$t/second.ms"
    if [[ $i -eq 1 ]]; then
        sleep 2
        record=$(ls -d /run/vessel-sandboxes/*/ | while read -r d; do grep -l "\"id\":\"$pod\"" "$d/sandbox.json" 2>/dev/null; done | head -1)
        owner=$(json ownerPid <"$record") qemu=$(json qemuPid <"$record")
        pss() { awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup"; }
        echo "$(pss "$owner") $(pss "$qemu")" >"$t/pss"
    fi
    start=$(date +%s%N)
    cri stopp "$pod" >/dev/null
    cri rmp "$pod" >/dev/null
    ms "$start" >>"$t/teardown.ms"
done
pod_ms=$(median <"$t/pod.ms") second_ms=$(median <"$t/second.ms") teardown_ms=$(median <"$t/teardown.ms")
awk -v p="$pod_ms" -v s="$second_ms" -v d="$teardown_ms" -v n="$count" 'BEGIN {
    printf "CRI pod start (RunPodSandbox to its first container running): %d ms; a second container into it: %d ms (%.0f%% of the pod start); teardown: %d ms (medians of %d)\n", p, s, 100 * s / p, d, n }'
read -r owner_kib qemu_kib <"$t/pss"
echo "host PSS of a pod with two containers: $((owner_kib + qemu_kib)) KiB (sandbox owner $owner_kib KiB, QEMU $qemu_kib KiB)"
