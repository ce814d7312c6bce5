import Foundation
import SwiftProtobuf
import VesselCore
import VesselLinux
import VesselProtocol
import VesselSandbox

extension ContainerdShim {
    /// containerd's shim socket for a group: unix:///run/containerd/s/ + hex(sha256(address/ns/id)).
    static func socketAddress(containerdAddress: String, namespace: String, group: String) -> String {
        "unix:///run/containerd/s/" + SHA256.hex(cleanPath([containerdAddress, namespace, group].joined(separator: "/")))
    }

    /// Go's filepath.Clean for the joined path (the hash is over the cleaned form).
    static func cleanPath(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/") where part != "." {
            if part == ".." { if !parts.isEmpty { parts.removeLast() } } else { parts.append(part) }
        }
        return (path.hasPrefix("/") ? "/" : "") + parts.joined(separator: "/")
    }

    /// `start`, run in the bundle: a pod's container joins its sandbox's owner (its address is
    /// derived, nothing is started); anything else gets an owner of its own, listening before it runs.
    static func start(_ flags: Flags) throws(RuntimeError) -> Int32 {
        let bundle = FileManager.default.currentDirectoryPath
        let spec = try OCISpec.load(bundle + "/config.json")
        let role = PodRole(annotations: spec.annotations ?? [:])
        let group = role.sandboxID(container: flags.id)
        let address = socketAddress(containerdAddress: flags.address, namespace: flags.namespace, group: group)
        if role == .sandbox {
            let path = String(address.dropFirst("unix://".count))
            if let listener = try bindOrReuse(path) {
                defer { Linux.close(listener) }
                var arguments = [binaryName, "-namespace", flags.namespace, "-id", flags.id, "-address", flags.address]
                if !flags.publishBinary.isEmpty { arguments += ["-publish-binary", flags.publishBinary] }
                if flags.debug { arguments.append("-debug") }
                let devNull: Int32
                do { devNull = try Linux.open("/dev/null", O_RDWR) } catch { throw RuntimeError(stage: "open /dev/null", error) }
                defer { Linux.close(devNull) }
                // Not the pipes containerd reads start's output from: it waits for their EOF.
                _ = try SelfExec.spawn(arguments, fds: [(devNull, 0), (devNull, 1), (devNull, 2), (listener, 3)], newSession: true)
            }
        }
        try writeAtomically(bundle + "/address", address)
        FileHandle.standardOutput.write(Data(address.utf8))
        return 0
    }

    /// A listener for a new owner; nil when an owner already answers there (containerd retried).
    private static func bindOrReuse(_ path: String) throws(RuntimeError) -> Int32? {
        do { try Linux.mkdirAll("/run/containerd/s", mode: 0o711) } catch { throw RuntimeError(stage: "create /run/containerd/s", error) }
        do {
            return try Linux.listenUnix(path)
        } catch  where error.errno == EADDRINUSE {
            if let fd = try? Linux.connectUnix(path) {
                Linux.close(fd)
                return nil
            }
            unlink(path)
            do { return try Linux.listenUnix(path) } catch { throw RuntimeError(stage: "listen on \(path)", error) }
        } catch {
            throw RuntimeError(stage: "listen on \(path)", error)
        }
    }

    private static func writeAtomically(_ path: String, _ text: String) throws(RuntimeError) {
        let temporary = path + ".tmp"
        guard (try? text.write(toFile: temporary, atomically: false, encoding: .utf8)) != nil, rename(temporary, path) == 0 else {
            throw RuntimeError("cannot write \(path)")
        }
    }

    /// `delete`: containerd runs it whenever a task's connection closed. With the owner alive it
    /// has nothing to do (the owner deleted the task, or still serves it); after an owner died it
    /// removes what the sandbox left: QEMU, mounts, cgroups, records.
    static func delete(_ flags: Flags) async throws(RuntimeError) -> Int32 {
        let store = try store(flags.namespace)
        let bundle = flags.bundle.isEmpty ? FileManager.default.currentDirectoryPath : flags.bundle
        if let record = try? store.load(flags.id), store.loadSandbox(record.sandbox)?.ownerAlive != true {
            SandboxCleanup.afterDeadOwner(store, sandbox: record.sandbox)
            store.remove(flags.id)
        }
        if !((try? store.load(flags.id)) != nil) {
            // The owner unmounts a rootfs it mounted; one it never got to, or a dead owner's, goes here.
            _ = umount2(bundle + "/rootfs", Int32(MNT_DETACH))
        }
        let response = Containerd_Task_V2_DeleteResponse.with {
            $0.exitStatus = 128 + UInt32(SIGKILL)
            $0.exitedAt = Google_Protobuf_Timestamp(date: Date())
        }
        let bytes = try during("encode the delete response") { try response.serializedData() }
        FileHandle.standardOutput.write(bytes)
        return 0
    }

    /// The owner: its log is containerd's `log` fifo in the bundle (onto stderr), its socket fd 3.
    static func serve(_ flags: Flags, signals: AsyncStream<Int32>) async throws(RuntimeError) -> Int32 {
        if let fifo = try? Linux.open("log", O_WRONLY) {
            dup2(fifo, 2)
            Linux.close(fifo)
        }
        let log = RuntimeLog(path: flags.debug ? "/proc/self/fd/2" : nil, format: .text, debug: flags.debug)
        let ttrpcAddress = ProcessInfo.processInfo.environment["TTRPC_ADDRESS"] ?? flags.address + ".ttrpc"
        let owner = try SandboxOwner(
            frontDoor: .containerd(namespace: flags.namespace, ttrpcAddress: ttrpcAddress),
            config: try configuration(log: log), store: try store(flags.namespace), sandboxID: flags.id, log: log)
        let status = await OwnerMain.run(owner: owner, listener: .inherited(3), signals: signals, log: log) {}
        unlink(String((try? String(contentsOfFile: "address", encoding: .utf8))?.dropFirst("unix://".count) ?? ""))
        return status
    }
}
