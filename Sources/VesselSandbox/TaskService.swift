import Foundation
import SwiftProtobuf
import VesselCore
import VesselProtocol

/// containerd's Task API served by the sandbox owner, for containerd and for the OCI CLI alike.
/// Handlers only translate messages; the owner does the work.
enum TaskService {
    static func make(_ owner: SandboxOwner) -> TTRPCService {
        let service = TTRPCService(name: TaskAPI.service)
        service.register(TaskAPI.create) { request in
            try await mapped {
                let pid = try await owner.create(try createRequest(request))
                return .with { $0.pid = UInt32(bitPattern: pid) }
            }
        }
        service.register(TaskAPI.start) { request in
            try await mapped {
                let pid = try await owner.start(request.id, request.execID)
                return .with { $0.pid = UInt32(bitPattern: pid) }
            }
        }
        service.register(TaskAPI.exec) { request in
            try await mapped {
                try await owner.exec(request)
                return .init()
            }
        }
        service.register(TaskAPI.state) { request in try await mapped { try await owner.state(request.id, request.execID) } }
        service.register(TaskAPI.wait) { request in
            try await mapped {
                let exit = try await owner.wait(request.id, request.execID)
                return .with {
                    $0.exitStatus = UInt32(bitPattern: exit.status)
                    $0.exitedAt = Google_Protobuf_Timestamp(date: exit.time)
                }
            }
        }
        service.register(TaskAPI.kill) { request in
            try await mapped {
                try await owner.kill(request.id, request.execID, signal: request.signal, all: request.all)
                return .init()
            }
        }
        service.register(TaskAPI.delete) { request in
            try await mapped { try await owner.delete(request.id, request.execID) }
        }
        service.register(TaskAPI.pids) { request in try await mapped { try await owner.pids(request.id) } }
        service.register(TaskAPI.pause) { request in
            try await mapped {
                try await owner.setPaused(request.id, true)
                return .init()
            }
        }
        service.register(TaskAPI.resume) { request in
            try await mapped {
                try await owner.setPaused(request.id, false)
                return .init()
            }
        }
        service.register(TaskAPI.resizePty) { request in
            try await mapped {
                try await owner.resize(request.id, request.execID, width: request.width, height: request.height)
                return .init()
            }
        }
        service.register(TaskAPI.closeIO) { request in
            try await mapped {
                if request.stdin { try await owner.closeStdin(request.id, request.execID) }
                return .init()
            }
        }
        service.register(TaskAPI.update) { request in
            try await mapped {
                try await owner.update(request.id, resources: request.resources.value)
                return .init()
            }
        }
        service.register(TaskAPI.stats) { request in
            try await mapped {
                let stats = try Metrics.any(try await owner.stats(request.id))
                return .with { $0.stats = stats }
            }
        }
        service.register(TaskAPI.connect) { request in try await mapped { await owner.connect(request.id) } }
        service.register(TaskAPI.shutdown) { request in
            _ = await owner.shutdownRequested(now: request.now)
            return .init()
        }
        service.register(TaskAPI.checkpoint) { _ in
            throw TTRPCError(.unimplemented, "checkpoint is not supported by vessel")
        }
        return service
    }

    static func createRequest(_ request: Containerd_Task_V2_CreateTaskRequest) throws(RuntimeError) -> CreateRequest {
        if !request.checkpoint.isEmpty { throw RuntimeError("restoring from a checkpoint is not supported", kind: .unimplemented) }
        var create = CreateRequest(id: request.id, bundle: request.bundle, rootfs: request.rootfs)
        create.stdio = StdioPaths(stdin: request.stdin, stdout: request.stdout, stderr: request.stderr, terminal: request.terminal)
        if request.options.typeURL == Vessel_OCICreateOptions.protoMessageName {
            guard let options = try? Vessel_OCICreateOptions(serializedBytes: request.options.value) else {
                throw .invalid("create \(request.id): unreadable options")
            }
            create.monitorPid = options.monitorPid
        }
        return create
    }

    /// The one place owner errors become ttrpc statuses (containerd maps these codes to its errdefs).
    static func mapped<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as RuntimeError {
            let code: TTRPCCode =
                switch error.kind {
                case .failed: .unknown
                case .notFound: .notFound
                case .alreadyExists: .alreadyExists
                case .failedPrecondition: .failedPrecondition
                case .invalidArgument: .invalidArgument
                case .unavailable: .unavailable
                case .unimplemented: .unimplemented
                }
            throw TTRPCError(code, error.message)
        }
    }
}

extension SandboxOwner {
    func state(_ id: String, _ execID: String) throws(RuntimeError) -> Containerd_Task_V2_StateResponse {
        let container = try container(id)
        let process = try container.process(execID)
        return .with {
            $0.id = process.execID.isEmpty ? id : process.execID
            $0.execID = process.execID
            $0.bundle = container.record.bundle
            $0.pid = UInt32(bitPattern: process.hostPid)
            $0.status =
                switch process.lifecycle.status {
                case .creating: .unknown
                case .created: .created
                case .running: .running
                case .paused: .paused
                case .stopped: .stopped
                }
            $0.stdin = process.stdio.stdin
            $0.stdout = process.stdio.stdout
            $0.stderr = process.stdio.stderr
            $0.terminal = process.stdio.terminal
            $0.exitStatus = process.exitStatus
            if let time = process.exitedAt { $0.exitedAt = time }
        }
    }

    func pids(_ id: String) throws(RuntimeError) -> Containerd_Task_V2_PidsResponse {
        let container = try container(id)
        let running = ([container.initProcess] + container.execs.values).filter { !$0.lifecycle.isStopped }
        return .with { $0.processes = Set(running.map(\.hostPid)).sorted().map { pid in .with { $0.pid = UInt32(bitPattern: pid) } } }
    }

    /// An unknown id is not an error here: containerd asks to learn whether the task survived.
    func connect(_ id: String) -> Containerd_Task_V2_ConnectResponse {
        .with {
            $0.shimPid = UInt32(bitPattern: getpid())
            $0.taskPid = containers[id].map { UInt32(bitPattern: $0.initProcess.hostPid) } ?? 0
            $0.version = "vessel-" + VesselVersion.string
        }
    }
}

/// The guest's cgroup v2 statistics as containerd's `io.containerd.cgroups.v2.Metrics`.
enum Metrics {
    static func any(_ response: Grpc_StatsContainerResponse) throws -> Google_Protobuf_Any {
        let cgroup = response.cgroupStats
        let raw = cgroup.memoryStats.stats
        let metrics = Io_Containerd_Cgroups_V2_Metrics.with {
            $0.pids = .with {
                $0.current = cgroup.pidsStats.current
                $0.limit = cgroup.pidsStats.limit
            }
            $0.cpu = .with {
                $0.usageUsec = cgroup.cpuStats.cpuUsage.totalUsage / 1000
                $0.userUsec = cgroup.cpuStats.cpuUsage.usageInUsermode / 1000
                $0.systemUsec = cgroup.cpuStats.cpuUsage.usageInKernelmode / 1000
                $0.nrPeriods = cgroup.cpuStats.throttlingData.periods
                $0.nrThrottled = cgroup.cpuStats.throttlingData.throttledPeriods
                $0.throttledUsec = cgroup.cpuStats.throttlingData.throttledTime / 1000
            }
            $0.memory = .with {
                $0.usage = cgroup.memoryStats.usage.usage
                $0.usageLimit = cgroup.memoryStats.usage.limit
                $0.anon = raw["anon"] ?? 0
                $0.file = raw["file"] ?? 0
                $0.kernelStack = raw["kernel_stack"] ?? 0
                $0.slab = raw["slab"] ?? 0
                $0.sock = raw["sock"] ?? 0
                $0.shmem = raw["shmem"] ?? 0
                $0.fileMapped = raw["file_mapped"] ?? 0
                $0.fileDirty = raw["file_dirty"] ?? 0
                $0.inactiveAnon = raw["inactive_anon"] ?? 0
                $0.activeAnon = raw["active_anon"] ?? 0
                $0.inactiveFile = raw["inactive_file"] ?? 0
                $0.activeFile = raw["active_file"] ?? 0
                $0.unevictable = raw["unevictable"] ?? 0
                $0.pgfault = raw["pgfault"] ?? 0
                $0.pgmajfault = raw["pgmajfault"] ?? 0
            }
        }
        return try Google_Protobuf_Any(bareTypeOf: metrics)
    }
}
