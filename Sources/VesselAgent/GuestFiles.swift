import FoundationEssentials
import VesselLinux
import VesselProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// CopyFile: the host pushes files (resolv.conf, hostname, volume contents) into the sandbox's run
/// area, in chunks. Nothing may land outside that area: ".." is refused by name and every lookup is
/// done with openat2(RESOLVE_BENEATH), so a symlink planted inside cannot lead out either.
enum CopyFile {
    static func perform(_ request: Grpc_CopyFileRequest, base: String) throws {
        let prefix = base.hasSuffix("/") ? base : base + "/"
        guard request.path.hasPrefix(prefix) else {
            throw AgentError.invalidArgument("CopyFile path \(request.path) is outside \(base)")
        }
        let components = try RootedPath.components(String(request.path.dropFirst(prefix.count)), field: "CopyFile path")
        guard let name = components.last else { throw AgentError.invalidArgument("CopyFile path \(request.path) names no file") }
        try Linux.mkdirAll(base)
        let baseFD = try Linux.open(base, Linux.openPath | O_DIRECTORY)
        defer { Linux.close(baseFD) }
        let beneath = RootedPath(rootFD: baseFD, confined: true)
        let dirMode = request.dirMode == 0 ? 0o755 : mode_t(request.dirMode & 0o7777)
        let parent = try beneath.create(Array(components.dropLast()), directory: true, mode: dirMode)
        Linux.close(parent)
        let dir = try beneath.open(Array(components.dropLast()), flags: O_DIRECTORY)
        defer { Linux.close(dir) }

        let type = request.fileMode & UInt32(S_IFMT)
        let permissions = mode_t(request.fileMode & 0o7777)
        if type == UInt32(S_IFDIR) {
            if mkdirat(dir, name, permissions) != 0 && errno != EEXIST { throw LinuxError(stage: "mkdir", detail: request.path) }
            return
        }
        if type == UInt32(S_IFLNK) {
            unlinkat(dir, name, 0)
            try sys("symlink", request.path) { symlinkat(String(decoding: request.data, as: UTF8.self), dir, name) }
            return
        }
        let flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (request.offset == 0 ? O_TRUNC : 0)
        let fd = try sys("open", request.path) { openat(dir, name, flags, permissions == 0 ? 0o644 : permissions) }
        defer { Linux.close(fd) }
        let data = [UInt8](request.data)
        var written = 0
        while written < data.count {
            written += try sys("pwrite", request.path) {
                data.withUnsafeBytes { pwrite(fd, $0.baseAddress! + written, $0.count - written, off_t(request.offset) + off_t(written)) }
            }
        }
        if permissions != 0 { try sys("fchmod", request.path) { fchmod(fd, permissions) } }
        try sys("fchown", request.path) { fchown(fd, uid_t(bitPattern: request.uid), gid_t(bitPattern: request.gid)) }
    }
}

enum GuestInfo {
    static let version = "0.1.0"

    static func details(_ request: Grpc_GuestDetailsRequest, initDaemon: Bool) -> Grpc_GuestDetailsResponse {
        var response = Grpc_GuestDetailsResponse()
        if request.memBlockSize, let text = try? Linux.readFile("/sys/devices/system/memory/block_size_bytes") {
            response.memBlockSizeBytes = UInt64(text.trimmed, radix: 16) ?? 0
        }
        if request.memHotplugProbe {
            response.supportMemHotplugProbe = Linux.exists("/sys/devices/system/memory/probe")
        }
        response.agentDetails.version = version
        response.agentDetails.initDaemon = initDaemon
        response.agentDetails.storageHandlers = ["9p", "bind", "local"]
        response.agentDetails.supportsSeccomp = false
        return response
    }

    static func setClock(_ request: Grpc_SetGuestDateTimeRequest, hostMode: Bool) throws {
        guard !hostMode else {
            throw AgentError.failedPrecondition("SetGuestDateTime refused: the agent runs in host mode and would set this host's clock")
        }
        var time = timespec(tv_sec: Int(request.sec), tv_nsec: Int(request.usec) * 1000)
        try sys("clock_settime") { clock_settime(CLOCK_REALTIME, &time) }
    }
}
