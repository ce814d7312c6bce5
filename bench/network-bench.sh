#!/usr/bin/env bash
# The network part of `make bench`: TCP throughput pod -> host and host -> pod (iperf3) and ping
# RTT from a container in a prepared pod network namespace (veth to a second namespace, as CNI
# leaves it), under Vessel and under runc with the same bundle and namespaces: ratios.
# usage: bench/network-bench.sh VESSEL KERNEL INITRD
set -euo pipefail
vessel=$(readlink -f "$1") kernel=$(readlink -f "$2") initrd=$(readlink -f "$3")
here=$(cd "$(dirname "$0")/.." && pwd)
scripts/install-deps.sh iperf3 runc busybox-static python3 >/dev/null
t=$(mktemp -d /tmp/vessel-network-bench.XXXXXX)
pod=vbench-pod-$$ out=vbench-out-$$
cleanup() {
    [[ -n ${server:-} ]] && kill "$server" 2>/dev/null || true
    "$vessel" --root "$t/vroot" --config "$t/vessel.toml" delete --force nb 2>/dev/null || true
    runc --root "$t/rroot" delete --force nb 2>/dev/null || true
    ip netns del "$pod" 2>/dev/null || true
    ip netns del "$out" 2>/dev/null || true
    rm -rf "$t"
}
trap cleanup EXIT

ip netns add "$pod" && ip netns add "$out"
ip -n "$pod" link add eth0 type veth peer name veth-out
ip -n "$pod" link set veth-out netns "$out"
ip -n "$pod" addr add 10.56.0.2/24 dev eth0 && ip -n "$pod" link set eth0 up && ip -n "$pod" link set lo up
ip -n "$pod" route add default via 10.56.0.1
ip -n "$out" addr add 10.56.0.1/24 dev veth-out && ip -n "$out" link set veth-out up && ip -n "$out" link set lo up
ip netns exec "$out" iperf3 -s -B 10.56.0.1 -D -I "$t/iperf3.pid" >/dev/null
server=$(cat "$t/iperf3.pid" 2>/dev/null || true)

# A bundle with busybox and iperf3 (its shared libraries copied in), joining the pod's namespace.
mkdir -p "$t/bundle/rootfs/bin" "$t/bundle/rootfs/lib" "$t/bundle/rootfs/proc" "$t/bundle/rootfs/sys" "$t/bundle/rootfs/dev" "$t/bundle/rootfs/tmp"
cp /bin/busybox "$t/bundle/rootfs/bin/" && for a in sh ping cat sleep; do ln -s busybox "$t/bundle/rootfs/bin/$a"; done
cp "$(command -v iperf3)" "$t/bundle/rootfs/bin/"
for lib in $(ldd "$(command -v iperf3)" | awk '/=>/ { print $3 } /ld-linux/ { print $1 }'); do
    mkdir -p "$t/bundle/rootfs$(dirname "$lib")" && cp -L "$lib" "$t/bundle/rootfs$lib"
done
python3 - "$t/bundle/config.json" "/run/netns/$pod" <<'EOF'
import json, sys
caps = ["CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_KILL"]
spec = {
    "ociVersion": "1.1.0",
    "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["sleep", "100000"], "cwd": "/",
                "env": ["PATH=/bin"], "capabilities": {k: caps for k in ["bounding", "effective", "permitted"]}},
    "root": {"path": "rootfs"}, "hostname": "nb",
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
               {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
               {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}],
    "linux": {"namespaces": [{"type": t} for t in ["pid", "mount", "uts", "ipc"]] + [{"type": "network", "path": sys.argv[2]}]},
}
json.dump(spec, open(sys.argv[1], "w"))
EOF
printf '[hypervisor]\nkernel = "%s"\ninitrd = "%s"\nmemory_mib = 256\n' "$kernel" "$initrd" >"$t/vessel.toml"

# One container per runtime; each measurement is an exec in it (JSON from iperf3: bits/s).
measure() { # $1: runtime label, $2...: the runtime's command prefix (run -d / exec)
    local label=$1
    shift
    "$@" exec nb iperf3 -c 10.56.0.1 -t 5 -J >"$t/$label-up.json"
    "$@" exec nb iperf3 -c 10.56.0.1 -t 5 -R -J >"$t/$label-down.json"
    "$@" exec nb ping -c 20 -i 0.2 -q 10.56.0.1 >"$t/$label-ping.txt"
}
"$vessel" --root "$t/vroot" --config "$t/vessel.toml" run -d --bundle "$t/bundle" nb >/dev/null
measure vessel "$vessel" --root "$t/vroot" --config "$t/vessel.toml"
"$vessel" --root "$t/vroot" --config "$t/vessel.toml" delete --force nb
runc --root "$t/rroot" run -d --bundle "$t/bundle" nb </dev/null >/dev/null 2>&1
measure runc runc --root "$t/rroot"
runc --root "$t/rroot" delete --force nb

python3 - "$t" <<'EOF'
import json, re, sys
t = sys.argv[1]
def gbps(name): return json.load(open(f"{t}/{name}.json"))["end"]["sum_received"]["bits_per_second"] / 1e9
def rtt(name): return float(re.search(r"= [\d.]+/([\d.]+)/", open(f"{t}/{name}-ping.txt").read()).group(1))
for direction, suffix in [("pod -> host", "up"), ("host -> pod", "down")]:
    v, r = gbps(f"vessel-{suffix}"), gbps(f"runc-{suffix}")
    print(f"TCP {direction}: vessel {v:.3f} Gbit/s, runc {r:.3f} Gbit/s: ratio {v / r:.3f}")
v, r = rtt("vessel"), rtt("runc")
print(f"ping RTT: vessel {v:.3f} ms, runc {r:.3f} ms: ratio {v / r:.1f}x")
EOF
