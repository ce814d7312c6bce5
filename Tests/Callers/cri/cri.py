#!/usr/bin/env python3
"""Mini crictl for Vessel tests: drives a CRI v1 endpoint (containerd's CRI plugin).

Usage: cri.py --socket PATH [--rpc-timeout S] SUBCOMMAND ...
Each subcommand prints one JSON object on stdout and exits 0. A gRPC error prints
"error: <STATUS_CODE>: <details>" on stderr and exits 1. Missing Python packages
exit 2. Stubs are generated from cri_v1.proto (next to this file) into
$VESSEL_CRI_STUBS (default: a temporary directory removed at exit).
"""

import argparse
import hashlib
import importlib
import inspect
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "cri_v1.proto")
DEFAULT_RPC_TIMEOUT = 120.0


def die(msg, code):
    print(msg.replace("\n", " "), file=sys.stderr)
    sys.exit(code)


try:
    import grpc
    import grpc_tools
    from grpc_tools import protoc
    from google.protobuf import json_format
except ImportError as exc:  # pragma: no cover - environment problem
    die(f"error: missing Python module ({exc.name}); run: pip install grpcio grpcio-tools", 2)


# --------------------------------------------------------------------------- stubs

def load_stubs():
    """Generate (or reuse) cri_v1_pb2 / cri_v1_pb2_grpc and import them."""
    with open(PROTO, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    base = os.environ.get("VESSEL_CRI_STUBS")
    if not base:
        base = tempfile.mkdtemp(prefix="vessel-cri-stubs-")
        import atexit
        atexit.register(shutil.rmtree, base, True)
    os.makedirs(base, exist_ok=True)
    # One subdirectory per proto content, filled atomically, so concurrent runs and
    # proto edits never see a half-written or stale module.
    out = os.path.join(base, f"cri_v1-{digest}")
    if not os.path.isfile(os.path.join(out, "cri_v1_pb2_grpc.py")):
        tmp = tempfile.mkdtemp(prefix=".gen-", dir=base)
        wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"-I{wkt}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            PROTO,
        ])
        if rc != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            die(f"error: grpc_tools.protoc failed on {PROTO} (rc={rc})", 2)
        try:
            os.rename(tmp, out)
        except OSError:
            # Another process won the race; use its copy.
            shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, out)
    return importlib.import_module("cri_v1_pb2"), importlib.import_module("cri_v1_pb2_grpc")


# --------------------------------------------------------------------------- helpers

_DICT_KW = {"preserving_proto_field_name": True}
_params = inspect.signature(json_format.MessageToDict).parameters
if "always_print_fields_with_no_presence" in _params:  # protobuf >= 5.26
    _DICT_KW["always_print_fields_with_no_presence"] = True
elif "including_default_value_fields" in _params:  # older protobuf
    _DICT_KW["including_default_value_fields"] = True


def to_dict(msg):
    # Zero-valued fields are printed too, so e.g. state SANDBOX_READY (= 0) is visible.
    # Proto3 JSON mapping: enums as names, 64-bit integers as strings.
    return json_format.MessageToDict(msg, **_DICT_KW)


def emit(obj):
    print(json.dumps(obj, indent=2, sort_keys=True))


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        die(f"error: cannot read JSON config {path}: {exc}", 2)


def parse_into(pb_cls, path):
    try:
        return json_format.ParseDict(read_json(path), pb_cls())
    except json_format.ParseError as exc:
        die(f"error: {path} is not a valid {pb_cls.DESCRIPTOR.name}: {exc}", 2)


# --------------------------------------------------------------------------- commands

def build_parser():
    p = argparse.ArgumentParser(prog="cri.py", description="mini crictl for Vessel tests")
    p.add_argument("--socket", required=True, help="CRI unix socket path (e.g. /run/containerd/containerd.sock)")
    p.add_argument("--rpc-timeout", type=float, default=DEFAULT_RPC_TIMEOUT, metavar="S",
                   help=f"deadline for each RPC in seconds (default {DEFAULT_RPC_TIMEOUT:g})")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")

    sub.add_parser("version", help="RuntimeService.Version")

    s = sub.add_parser("runp", help="RunPodSandbox from a PodSandboxConfig JSON file")
    s.add_argument("--config", required=True, metavar="FILE.json")
    s.add_argument("--runtime", default="", metavar="HANDLER", help="CRI runtime handler name")

    for name, what in (("stopp", "StopPodSandbox"), ("rmp", "RemovePodSandbox"),
                       ("inspectp", "PodSandboxStatus")):
        s = sub.add_parser(name, help=what)
        s.add_argument("pod_id", metavar="POD_ID")
    sub.add_parser("pods", help="ListPodSandbox")

    s = sub.add_parser("create", help="CreateContainer")
    s.add_argument("pod_id", metavar="POD_ID")
    s.add_argument("--config", required=True, metavar="CONTAINER.json")
    s.add_argument("--pod-config", required=True, metavar="POD.json")

    for name, what in (("start", "StartContainer"), ("rm", "RemoveContainer"),
                       ("inspect", "ContainerStatus"), ("stats", "ContainerStats")):
        s = sub.add_parser(name, help=what)
        s.add_argument("container_id", metavar="ID")

    s = sub.add_parser("stop", help="StopContainer")
    s.add_argument("container_id", metavar="ID")
    s.add_argument("--timeout", type=int, default=0, metavar="N", help="grace period in seconds")

    s = sub.add_parser("ps", help="ListContainers")
    s.add_argument("--pod", default="", metavar="POD_ID", help="only containers of this pod")

    s = sub.add_parser("exec-sync", help="ExecSync: exec-sync ID [--timeout N] -- CMD...")
    s.add_argument("container_id", metavar="ID")
    s.add_argument("--timeout", type=int, default=0, metavar="N", help="command timeout in seconds (0 = none)")

    s = sub.add_parser("stats-all", help="ListContainerStats")
    s.add_argument("--pod", default="", metavar="POD_ID")

    s = sub.add_parser("update", help="UpdateContainerResources (Linux)")
    s.add_argument("container_id", metavar="ID")
    s.add_argument("--memory", type=int, required=True, metavar="BYTES")
    s.add_argument("--cpu-quota", type=int, default=0, metavar="N")
    s.add_argument("--cpu-period", type=int, default=0, metavar="N")

    sub.add_parser("images", help="ListImages")
    s = sub.add_parser("inspecti", help="ImageStatus")
    s.add_argument("image", metavar="IMAGE")
    return p


def run(args, cmd_tail, pb, pbg):
    target = args.socket if args.socket.startswith("unix:") else "unix://" + args.socket
    channel = grpc.insecure_channel(target, options=[
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ])
    rt = pbg.RuntimeServiceStub(channel)
    im = pbg.ImageServiceStub(channel)
    t = args.rpc_timeout
    c = args.cmd

    if c == "version":
        emit(to_dict(rt.Version(pb.VersionRequest(version="v1"), timeout=t)))
    elif c == "runp":
        cfg = parse_into(pb.PodSandboxConfig, args.config)
        r = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg, runtime_handler=args.runtime), timeout=t)
        emit({"pod_sandbox_id": r.pod_sandbox_id})
    elif c == "stopp":
        emit(to_dict(rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=args.pod_id), timeout=t)))
    elif c == "rmp":
        emit(to_dict(rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=args.pod_id), timeout=t)))
    elif c == "inspectp":
        req = pb.PodSandboxStatusRequest(pod_sandbox_id=args.pod_id, verbose=False)
        emit(to_dict(rt.PodSandboxStatus(req, timeout=t)))
    elif c == "pods":
        emit(to_dict(rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=t)))
    elif c == "create":
        req = pb.CreateContainerRequest(
            pod_sandbox_id=args.pod_id,
            config=parse_into(pb.ContainerConfig, args.config),
            sandbox_config=parse_into(pb.PodSandboxConfig, args.pod_config),
        )
        emit({"container_id": rt.CreateContainer(req, timeout=t).container_id})
    elif c == "start":
        emit(to_dict(rt.StartContainer(pb.StartContainerRequest(container_id=args.container_id), timeout=t)))
    elif c == "stop":
        req = pb.StopContainerRequest(container_id=args.container_id, timeout=args.timeout)
        emit(to_dict(rt.StopContainer(req, timeout=max(t, args.timeout + 30))))
    elif c == "rm":
        emit(to_dict(rt.RemoveContainer(pb.RemoveContainerRequest(container_id=args.container_id), timeout=t)))
    elif c == "inspect":
        req = pb.ContainerStatusRequest(container_id=args.container_id, verbose=False)
        emit(to_dict(rt.ContainerStatus(req, timeout=t)))
    elif c == "ps":
        req = pb.ListContainersRequest()
        if args.pod:
            req.filter.pod_sandbox_id = args.pod
        emit(to_dict(rt.ListContainers(req, timeout=t)))
    elif c == "exec-sync":
        if not cmd_tail:
            die("error: exec-sync needs a command after --", 2)
        req = pb.ExecSyncRequest(container_id=args.container_id, cmd=cmd_tail, timeout=args.timeout)
        deadline = max(t, args.timeout + 30) if args.timeout > 0 else t
        r = rt.ExecSync(req, timeout=deadline)
        emit({
            "stdout": r.stdout.decode("utf-8", errors="replace"),
            "stderr": r.stderr.decode("utf-8", errors="replace"),
            "exit_code": r.exit_code,
        })
    elif c == "stats":
        emit(to_dict(rt.ContainerStats(pb.ContainerStatsRequest(container_id=args.container_id), timeout=t)))
    elif c == "stats-all":
        req = pb.ListContainerStatsRequest()
        if args.pod:
            req.filter.pod_sandbox_id = args.pod
        emit(to_dict(rt.ListContainerStats(req, timeout=t)))
    elif c == "update":
        res = pb.LinuxContainerResources(memory_limit_in_bytes=args.memory,
                                         cpu_quota=args.cpu_quota, cpu_period=args.cpu_period)
        req = pb.UpdateContainerResourcesRequest(container_id=args.container_id, linux=res)
        emit(to_dict(rt.UpdateContainerResources(req, timeout=t)))
    elif c == "images":
        emit(to_dict(im.ListImages(pb.ListImagesRequest(), timeout=t)))
    elif c == "inspecti":
        req = pb.ImageStatusRequest(image=pb.ImageSpec(image=args.image), verbose=False)
        emit(to_dict(im.ImageStatus(req, timeout=t)))
    else:  # argparse already rejects unknown subcommands
        die(f"error: unknown subcommand {c}", 2)
    channel.close()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the exec-sync command, passed through untouched.
    tail = []
    if "--" in argv:
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    if tail and args.cmd != "exec-sync":
        die("error: '--' is only valid for exec-sync", 2)
    pb, pbg = load_stubs()
    try:
        run(args, tail, pb, pbg)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        name = code.name if code is not None else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        die(f"error: {name}: {details or ''}", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
