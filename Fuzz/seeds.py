#!/usr/bin/env python3
"""Writes the hand-made seed inputs in Corpus/<target>/seed-* (valid examples of each format, laid out
as each harness reads its input; see the comment at the top of each harness). Crash inputs found by
fuzzing sit beside them as crash-*; this script leaves those alone."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    directory = os.path.join(HERE, "Corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


# Protobuf, just the wire types the seeds need.
def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(number, value):
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def ttrpc_request(service, method, payload=b"", timeout=0, metadata=()):
    out = field(1, service) + field(2, method) + field(3, payload)
    if timeout:
        out += field(4, timeout)
    for key, value in metadata:
        out += field(5, field(1, key) + field(2, value))
    return out


def ttrpc_response(code=0, message="", payload=b""):
    status = (field(1, code) if code else b"") + (field(2, message) if message else b"")
    return field(1, status) + field(2, payload)


def frame(stream, kind, payload, flags=0):
    return struct.pack(">IIBB", len(payload), stream, kind, flags) + payload


# ttrpc: byte 0 bit 0 = side (0 server, 1 client); server: bits 1-7 read size; client: bit 1 = 4 calls,
# bits 2-7 read size.
echo = frame(1, 1, ttrpc_request("fuzz.Service", "Echo", field(1, "hi")))
write("ttrpc", "server-echo-fail", b"\x00" + echo + frame(3, 1, ttrpc_request("fuzz.Service", "Fail")))
create = ttrpc_request("fuzz.Service", "CreateContainer", field(1, "c1") + field(2, "e1"), timeout=10**9,
                       metadata=[("containerd-namespace-ttrpc", "default")])
write("ttrpc", "server-split-reads", b"\x02" + frame(1, 1, create) + frame(2, 1, b"") + frame(3, 3, b"data")
      + frame(5, 1, ttrpc_request("fuzz.Service", "ExecProcess", field(1, "c1") + field(2, "x"))))
write("ttrpc", "server-unknown-and-oversized", b"\x00" + frame(1, 1, ttrpc_request("no.Such", "Echo"))
      + frame(3, 1, ttrpc_request("fuzz.Service", "Nope")) + struct.pack(">IIBB", 5 << 20, 5, 1, 0) + b"\x00" * 16)
write("ttrpc", "client-ok", b"\x01" + frame(1, 2, ttrpc_response(payload=field(1, 7))))
write("ttrpc", "client-four-calls", b"\x13" + frame(7, 2, ttrpc_response(5, "no such container"))
      + frame(3, 2, ttrpc_response(99, "odd code")) + frame(5, 3, b"data")
      + frame(1, 2, ttrpc_response(payload=b"\xff")))


# vhost-user: records of [fd spec][12-byte header][payload]; fd spec low nibble = count, 0x10 = eventfds.
def vhost(request, payload=b"", fds=0, eventfds=False, flags=1):
    spec = fds | (0x10 if eventfds else 0)
    return bytes([spec]) + struct.pack("<III", request, flags, len(payload)) + payload


u32 = lambda v: struct.pack("<I", v)
u64 = lambda v: struct.pack("<Q", v)
UVA = 0x7F00_0000_0000
negotiate = (vhost(1) + vhost(2, u64(1 << 32 | 1 << 30)) + vhost(15) + vhost(16, u64(0x201)) + vhost(17) + vhost(3)
             + vhost(24, u32(0) + u32(8) + u32(0) + b"\x00" * 8))
write("vhost-user", "negotiate", negotiate)
start = negotiate + vhost(5, u32(1) + u32(0) + u64(0) + u64(1 << 20) + u64(UVA) + u64(0), fds=1)
for i, ring in ((0, 0), (1, 0x4000)):
    start += vhost(8, u32(i) + u32(16)) + vhost(10, u32(i) + u32(0))
    start += vhost(9, u32(i) + u32(0) + u64(UVA + ring) + u64(UVA + ring + 0x2000) + u64(UVA + ring + 0x1000) + u64(0))
    start += vhost(12, u64(i), fds=1, eventfds=True) + vhost(13, u64(i), fds=1, eventfds=True)
    start += vhost(14, u64(i | 0x100)) + vhost(18, u32(i) + u32(1))
write("vhost-user", "start-device", start + vhost(11, u32(0) + u32(0)) + vhost(4))

# virtqueue: size selector, flags, per region (u16 size-1, u64 gpa, u64 uva), desc/avail/used offsets, base,
# then the contents.
GPA = 0x4000_0000


def desc(addr, length, flags, next_):
    return struct.pack("<QIHH", addr, length, flags, next_)


def ring_memory(gpa, buffers):
    table = (desc(gpa + buffers, 44, 1, 1) + desc(gpa + buffers + 0x100, 100, 2, 0)
             + desc(gpa + buffers + 0x200, 64, 0, 0))
    table = table.ljust(0x1000, b"\x00")
    avail = struct.pack("<HHHH", 0, 2, 0, 2).ljust(0x1000, b"\x00")
    used = b"\x00" * 0x1000
    return table + avail + used + b"\x07" * 0x300


header = bytes([4, 2]) + struct.pack("<HQQ", 0x3FFF, GPA, UVA) + struct.pack("<HHHH", 0, 0x1000, 0x2000, 0)
write("virtqueue", "one-region", header + ring_memory(GPA, 0x3000))
header = (bytes([4, 3]) + struct.pack("<HQQ", 0x3FFF, GPA, UVA)
          + struct.pack("<HQQ", 0x3FFF, 0x1_0000_0000, UVA + 0x100000)
          + struct.pack("<HHHH", 0, 0x1000, 0x2000, 0))
write("virtqueue", "two-regions-uva", header + ring_memory(GPA, 0x3000) + b"\x00" * (0x4000 - 0x3300) + b"\x09" * 0x100)


# vsock-device: knobs byte, then operations (see the harness). Ports: choice 0 = 1024, 2 = first host port,
# 4 = guest port 5000.
def post_rx(count, payload=4096):
    return bytes([2 | (count - 1) << 4]) + struct.pack("<H", payload) * count


def guest(op, src=4, dst=0, payload=b"", flags=0, shape=0):
    return bytes([0, shape, src, dst, flags, op]) + struct.pack("<H", len(payload)) + payload


PUMP = b"\x03"
write("vsock-device", "guest-connect", b"\x00" + post_rx(4) + guest(1) + PUMP + guest(5, payload=b"hello") + PUMP
      + b"\x04\x00\x02" + PUMP + b"\x05\x00" + guest(4, flags=3) + PUMP + guest(3) + PUMP)
write("vsock-device", "host-connect", b"\x00" + b"\x07\x00\x05" + post_rx(4) + PUMP + guest(2, src=0, dst=2) + PUMP
      + b"\x04\x00\x01" + PUMP + guest(6, src=0, dst=2) + guest(7, src=0, dst=2) + PUMP + b"\x06\x00" + PUMP)
CONNECT = b"CONNECT 1024 100\n"
write("vsock-device", "hybrid-handshake", b"\x05" + b"\x08" + bytes([len(CONNECT)]) + CONNECT
      + PUMP + post_rx(2) + PUMP + guest(2, src=0, dst=2) + PUMP + b"\x0a\x00" + PUMP + guest(1) + PUMP)
write("vsock-device", "malformed-chains", b"\x08" + b"\x09\x01" + struct.pack("<HIHH", 0x40, 44, 1, 0)
      + b"\x09\x00" + struct.pack("<QIHH", 1 << 40, 64, 0, 0) + post_rx(2) + guest(1, shape=1) + b"\x00\x01"
      + PUMP + b"\x0a\x01" + bytes([4]) + struct.pack("<HHH", 0, 0x1000, 0x2000) + b"\x00\x00"
      + bytes([4]) + struct.pack("<HHH", 0x4000, 0x5000, 0x6000) + b"\x00\x00" + PUMP)

# oci-spec: config.json as runc's `spec` writes it, plus what docker adds; an exec's process; resources.
spec = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False, "consoleSize": {"height": 24, "width": 80},
        "user": {"uid": 0, "gid": 0, "additionalGids": [10], "umask": 18},
        "args": ["sh", "-c", "echo hi"], "env": ["PATH=/usr/bin:/bin", "TERM=xterm"], "cwd": "/",
        "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True, "oomScoreAdj": -500,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "vessel",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "nosuid"]},
        {"destination": "/data", "type": "bind", "source": "volume", "options": ["rbind", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=65536k"]},
    ],
    "hooks": {"prestart": [{"path": "/usr/bin/true", "args": ["true"], "timeout": 5}]},
    "annotations": {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod1"},
    "linux": {
        "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 65536}],
        "sysctl": {"net.ipv4.ip_forward": "1"},
        "resources": {
            "devices": [{"allow": False, "access": "rwm"},
                        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}],
            "memory": {"limit": 268435456, "swappiness": 0},
            "cpu": {"shares": 1024, "quota": -1, "period": 100000, "cpus": "0"},
            "pids": {"limit": 100}, "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        },
        "cgroupsPath": "/vessel/c1",
        "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "mount"}],
        "devices": [{"type": "c", "path": "/dev/fuse", "major": 10, "minor": 229, "fileMode": 438}],
        "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"],
                    "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW",
                                  "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
        "rootfsPropagation": "rprivate", "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
    },
}
write("oci-spec", "config", json.dumps(spec, indent=2))
write("oci-spec", "exec-process", json.dumps({"user": {"uid": 1, "gid": 1}, "args": ["ls"], "cwd": "/tmp",
                                               "env": ["A=b"], "terminal": True}))
write("oci-spec", "resources", json.dumps(spec["linux"]["resources"]))
write("oci-spec", "negative-uid", '{"ociVersion":"1","process":{"user":{"uid":-1,"gid":0},"cwd":"/","args":["a"]},'
                                  '"root":{"path":"rootfs"}}')

# config-toml: the installed default and a short one.
with open(os.path.join(HERE, "..", "packaging", "configuration.toml")) as f:
    write("config-toml", "installed", f.read().replace("@PREFIX@", "/usr/local"))
write("config-toml", "short", '[hypervisor]\nvcpus = 2\nmemory_mib = 512\n'
                              'kernel_params = ["quiet", "agent.log=debug"]\n'
                              '[agent]\nlog_level = "debug"\ndebug_console = true\n')


# netlink: sequence byte, dump flag byte, then one datagram of messages as the kernel sends them.
def attr(kind, data):
    body = struct.pack("<HH", 4 + len(data), kind) + data
    return body + b"\x00" * (-len(body) % 4)


def nlmsg(kind, body, seq=7, flags=2):
    return struct.pack("<IHHII", 16 + len(body), kind, flags, seq, 0) + body + b"\x00" * (-len(body) % 4)


link = nlmsg(16, struct.pack("<BBHiII", 0, 0, 1, 2, 0x1043, 0) + attr(3, b"eth0\x00") + attr(4, u32(1500))
             + attr(1, b"\x02\x42\xac\x11\x00\x02") + attr(18, attr(1, b"veth\x00")))
address = nlmsg(20, struct.pack("<BBBBi", 2, 24, 0, 0, 2) + attr(1, b"\x0a\x00\x00\x02") + attr(2, b"\x0a\x00\x00\x02"))
route = nlmsg(24, bytes([2, 0, 0, 0, 254, 4, 0, 1]) + u32(0) + attr(5, b"\x0a\x00\x00\x01") + attr(4, u32(2))
              + attr(15, u32(254)))
neighbour = nlmsg(28, struct.pack("<BBHiHBB", 2, 0, 0, 2, 0x80, 0, 0) + attr(1, b"\x0a\x00\x00\x01")
                  + attr(2, b"\x02" * 6))
write("netlink", "dump", bytes([7, 1]) + link + address + route + neighbour + nlmsg(3, u32(0)))
write("netlink", "ack-and-error", bytes([7, 0]) + nlmsg(2, struct.pack("<i", -19) + nlmsg(18, b"")[:16])
      + nlmsg(2, u32(0) + nlmsg(18, b"")[:16], seq=8))


# Hand-made reproductions of what fuzzing found (crash-*, beside the fuzzer's own crash inputs): each
# crashed, hung or aborted before its fix and is a regression test of the corpus from then on.
def crash(target, name, data):
    directory = os.path.join(HERE, "Corpus", target)
    with open(os.path.join(directory, "crash-" + name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


# A 2 MiB region over the 1 MiB memfd, rings past its end: SIGBUS when the device starts.
past_end = negotiate + vhost(5, u32(1) + u32(0) + u64(0) + u64(2 << 20) + u64(UVA) + u64(0), fds=1)
for i, ring in ((0, 0x180000), (1, 0x184000)):
    past_end += vhost(8, u32(i) + u32(16)) + vhost(10, u32(i) + u32(0))
    past_end += vhost(9, u32(i) + u32(0) + u64(UVA + ring) + u64(UVA + ring + 0x2000) + u64(UVA + ring + 0x1000)
                      + u64(0))
    past_end += vhost(12, u64(i), fds=1, eventfds=True) + vhost(18, u32(i) + u32(1))
crash("vhost-user", "region-past-end-of-fd", past_end)
# toml++ asserts (abort) on a table name that starts with neither a key character nor a quote, and on an
# array element that starts with '}'.
crash("config-toml", "table-name-not-a-key", "[hypervisor]\nvcpus = 2\n[\xe9]\n")
crash("config-toml", "array-element-brace", '[hypervisor]\nkernel_params = [ "quiet", } ]\n')
# The tx ring's used ring on top of its avail ring: every used entry moves avail->idx on by one, so a
# device that drains "until empty" never returns (the budget per call ends it).
crash("vsock-device", "overlapping-rings", bytes([0, 0x0A, 1, 4]) + struct.pack("<HHHH", 0, 0x1000, 0x2000, 0)
      + bytes([4]) + struct.pack("<HHHH", 0x4000, 0x5000, 0x5000, 5))
