import Foundation
import Testing
import VesselDevSupport
import VesselProtocol
import VesselTestSupport

/// RPCs around the containers: files, clock, details, stats, freezer.
@Suite(.timeLimit(.minutes(3)), .serialized)
struct AgentServiceTests {
    @Test func copyFileStaysInsideTheRunArea() async throws {
        try await withAgent { agent in
            let target = agent.runDir + "/sandbox/etc/hosts"
            for (offset, chunk) in [(Int64(0), "127.0.0.1 "), (Int64(10), "localhost\n")] {
                _ = try await agent.client.call(
                    AgentAPI.copyFile,
                    Grpc_CopyFileRequest.with {
                        $0.path = target
                        $0.fileSize = 20
                        $0.fileMode = 0o100644
                        $0.dirMode = 0o750
                        $0.offset = offset
                        $0.data = Data(chunk.utf8)
                    })
            }
            #expect(try String(contentsOfFile: target, encoding: .utf8) == "127.0.0.1 localhost\n")

            await expectError(.invalidArgument, containing: "outside") {
                _ = try await agent.client.call(
                    AgentAPI.copyFile,
                    Grpc_CopyFileRequest.with {
                        $0.path = "/tmp/vessel-evil"
                        $0.data = Data("x".utf8)
                    })
            }
            await expectError(.invalidArgument, containing: "..") {
                _ = try await agent.client.call(
                    AgentAPI.copyFile,
                    Grpc_CopyFileRequest.with {
                        $0.path = agent.runDir + "/../evil"
                        $0.data = Data("x".utf8)
                    })
            }
            // A symlink planted inside the area that points out of it must not be followed.
            let outside = agent.directory.appendingPathComponent("outside").path
            try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: agent.runDir + "/link", withDestinationPath: outside)
            await expectError(.invalidArgument, containing: "link") {
                _ = try await agent.client.call(
                    AgentAPI.copyFile,
                    Grpc_CopyFileRequest.with {
                        $0.path = agent.runDir + "/link/evil"
                        $0.data = Data("x".utf8)
                    })
            }
            #expect(!FileManager.default.fileExists(atPath: outside + "/evil"))
        }
    }

    @Test func hostModeRefusesTheClockAndReportsDetails() async throws {
        try await withAgent { agent in
            await expectError(.failedPrecondition, containing: "host mode") {
                _ = try await agent.client.call(AgentAPI.setGuestDateTime, Grpc_SetGuestDateTimeRequest.with { $0.sec = 0 })
            }
            let details = try await agent.client.call(AgentAPI.getGuestDetails, Grpc_GuestDetailsRequest.with { $0.memBlockSize = true })
            #expect(!details.agentDetails.version.isEmpty)
            #expect(details.agentDetails.initDaemon == false)
            let version = try await agent.client.version()
            #expect(version.agentVersion == details.agentDetails.version)
        }
    }

    @Test func statsAndPauseUseTheHostCgroups() async throws {
        try await withAgent { agent in
            try await agent.run("busy", ["sh", "-c", "i=0; while :; do i=$((i+1)); done"])
            let stats = {
                try await agent.client.call(AgentAPI.statsContainer, Grpc_StatsContainerRequest.with { $0.containerID = "busy" })
            }
            let cpu = { try await stats().cgroupStats.cpuStats.cpuUsage.totalUsage }
            #expect(try await waitUntil(timeout: 10) { try await cpu() > 0 }, "a busy container never used CPU")
            let first = try await stats()
            #expect(first.cgroupStats.memoryStats.usage.usage > 0)
            #expect(first.cgroupStats.pidsStats.current >= 1)

            // Frozen: the CPU count stops (two samples 200 ms apart agree); thawed: it moves again.
            // Waiting for each, not for a fixed time, keeps a loaded host from failing either.
            _ = try await agent.client.call(AgentAPI.pauseContainer, Grpc_PauseContainerRequest.with { $0.containerID = "busy" })
            #expect(
                try await waitUntil(timeout: 10) {
                    let before = try await cpu()
                    try await Task.sleep(for: .milliseconds(200))
                    return try await cpu() == before
                }, "a paused container kept using CPU")
            await expectError(.failedPrecondition, containing: "not running") {
                _ = try await agent.client.call(AgentAPI.pauseContainer, Grpc_PauseContainerRequest.with { $0.containerID = "busy" })
            }
            let frozen = try await cpu()
            _ = try await agent.client.call(AgentAPI.resumeContainer, Grpc_ResumeContainerRequest.with { $0.containerID = "busy" })
            #expect(try await waitUntil(timeout: 10) { try await cpu() > frozen }, "a resumed container never ran again")
            try await agent.client.removeContainer("busy")
        }
    }
}

/// Limits, live updates and OOM events through the host's cgroup v1 memory and pids controllers.
@Suite(
    .timeLimit(.minutes(3)), .serialized,
    .enabled(
        if: ["pids", "memory"].allSatisfy { FileManager.default.fileExists(atPath: "/sys/fs/cgroup/\($0)/cgroup.procs") },
        "needs the cgroup v1 pids and memory hierarchies at /sys/fs/cgroup/{pids,memory}"))
struct CgroupHostTests {
    @Test func updateAndOOMEvent() async throws {
        try await withAgent { agent in
            var spec = agent.spec(["sleep", "1000"])
            spec.linux.resources = .with { $0.pids = .with { $0.limit = 50 } }
            try await agent.client.createContainer("lim", spec: spec)
            let pidsMax = "/sys/fs/cgroup/pids/vessel/agent/lim/pids.max"
            #expect(try String(contentsOfFile: pidsMax, encoding: .utf8) == "50\n")
            try await agent.client.call(
                AgentAPI.updateContainer,
                Grpc_UpdateContainerRequest.with {
                    $0.containerID = "lim"
                    $0.resources = .with { $0.pids = .with { $0.limit = 77 } }
                })
            #expect(try String(contentsOfFile: pidsMax, encoding: .utf8) == "77\n")
            try await agent.client.removeContainer("lim")
            #expect(!FileManager.default.fileExists(atPath: pidsMax))

            var hog = agent.spec(["sh", "-c", "dd if=/dev/zero of=/dev/null bs=128M count=1"])
            hog.linux.resources = .with { $0.memory = .with { $0.limit = 32 << 20 } }
            try await agent.client.createContainer("hog", spec: hog)
            try await agent.client.startContainer("hog")
            let event = try await agent.client.call(AgentAPI.getOOMEvent, Grpc_GetOOMEventRequest())
            #expect(event.containerID == "hog")
            #expect(try await agent.client.wait("hog") == 128 + 9)
        }
    }
}
