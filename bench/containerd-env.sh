# Shared by the containerd benchmark and the soak: a private containerd in directory $t (root,
# state, sockets, logs all under it) with the vessel shim on its PATH and a busybox image
# "docker.io/library/bench:1" (no registry) imported into the default and k8s.io namespaces.
# usage: . bench/containerd-env.sh; containerd_env_start DIR VESSEL KERNEL INITRD  (sets $daemon)
#        containerd_env_stop DIR
containerd_env_start() {
    local t=$1 vessel=$2 kernel=$3 initrd=$4
    # A busybox image (no registry), the shim on containerd's PATH, our configuration in its environment.
    mkdir -p "$t/bin" "$t/img" "$t/logs"
    ln -s "$vessel" "$t/bin/containerd-shim-vessel-v2"
    printf '[hypervisor]\nkernel = "%s"\ninitrd = "%s"\nmemory_mib = 256\n' "$kernel" "$initrd" >"$t/vessel.toml"
    mkdir -p "$t/rootfs/bin"
    cp /bin/busybox "$t/rootfs/bin/"
    for applet in sh true sleep echo cat; do ln -s busybox "$t/rootfs/bin/$applet"; done
    umoci init --layout "$t/img/oci" && umoci new --image "$t/img/oci:b"
    umoci unpack --image "$t/img/oci:b" "$t/img/u" >/dev/null 2>&1 && cp -a "$t/rootfs/." "$t/img/u/rootfs/"
    umoci repack --image "$t/img/oci:b" "$t/img/u" && umoci config --image "$t/img/oci:b" --config.cmd sleep --config.cmd 1000000
    skopeo copy "oci:$t/img/oci:b" "docker-archive:$t/b.tar:docker.io/library/bench:1" >/dev/null
    cat >"$t/config.toml" <<EOF
version = 2
root = "$t/root"
state = "$t/state"
[grpc]
  address = "$t/c.sock"
[ttrpc]
  address = "$t/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$t/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/bench:1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vessel]
      runtime_type = "io.containerd.vessel.v2"
EOF
    PATH="$t/bin:/usr/sbin:/usr/bin:/sbin:/bin" VESSEL_CONFIG="$t/vessel.toml" containerd --config "$t/config.toml" >"$t/containerd.log" 2>&1 &
    daemon=$!
    for _ in $(seq 100); do ctr -a "$t/c.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
    ctr -a "$t/c.sock" -n default images import "$t/b.tar" >/dev/null
    ctr -a "$t/c.sock" -n k8s.io images import "$t/b.tar" >/dev/null
}

containerd_env_stop() {
    local t=$1
    [[ -n ${daemon:-} ]] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
    umount -R -l "$t/root" "$t/state" 2>/dev/null || true
}
