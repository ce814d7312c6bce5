import CVessel
import VesselLinux
import VesselProtocol
#if canImport(Glibc)
import Glibc
#endif

/// The last steps before the container process runs, in the helper: session and controlling
/// terminal, credentials, working directory, then execve of the program found on the process's PATH.
struct ProcessLaunch {
    let process: Grpc_Process

    static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    func exec() throws -> Never {
        guard let program = process.args.first, !program.isEmpty else {
            throw LinuxError(stage: "process.args", errno: EINVAL, detail: "is empty")
        }
        _ = setsid()
        if process.terminal {
            try sys("TIOCSCTTY") { vessel_set_ctty(0) }
        }
        let user = process.user
        try sys("setgroups") { user.additionalGids.withUnsafeBufferPointer { vessel_setgroups($0.count, $0.baseAddress) } }
        try sys("setgid", "\(user.gid)") { setgid(user.gid) }
        try sys("setuid", "\(user.uid)") { setuid(user.uid) }
        let cwd = process.cwd.isEmpty ? "/" : process.cwd
        try sys("process.cwd", cwd) { chdir(cwd) }
        let path = try resolve(program)
        let argv = CStringArray(process.args)
        let envp = CStringArray(process.env)
        _ = argv.withPointer { a in envp.withPointer { e in execve(path, a, e) } }
        throw LinuxError(stage: "exec", detail: program)
    }

    /// execvp semantics, but with the container's PATH from process.env, not the helper's.
    private func resolve(_ program: String) throws -> String {
        if program.contains("/") { return program }
        let pathVariable = process.env.last { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) } ?? Self.defaultPath
        for directory in pathVariable.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = (directory.isEmpty ? "." : String(directory)) + "/" + program
            var st = stat()
            if stat(candidate, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG && access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        throw LinuxError(stage: "exec", errno: ENOENT, detail: "\(program) (not found in PATH)")
    }
}
