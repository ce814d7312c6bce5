import Foundation
import TOMLKit
import VesselVM

/// /etc/vessel/configuration.toml (or `--config`, or $VESSEL_CONFIG). Every key is optional;
/// the kernel and initrd default to the ones next to the `vessel` binary (what `make` builds in
/// out/), else those in the share directory of the prefix it is installed in (`make install`).
public struct RuntimeConfig: Codable, Sendable, Equatable {
    public struct Hypervisor: Codable, Sendable, Equatable {
        public var path = "/usr/bin/qemu-system-x86_64"
        public var kernel = GuestFiles.find("bzImage")
        public var initrd = GuestFiles.find("initrd.img")
        public var machineType = "q35"
        public var vcpus = 1
        public var memoryMiB = 256
        /// auto = kvm when a guest really boots with it on this host, else tcg (with a warning).
        public var accelerator = "auto"
        public var sharedFS = "9p"
        public var msize9p = 512 * 1024
        public var kernelParams: [String] = []
        /// Seconds from QEMU start to a ready agent before the sandbox counts as failed.
        public var bootTimeout = 120
        /// TCG's translated-code cache; 0 leaves QEMU's default (sized from guest RAM). Measured at
        /// 256 MiB: 32 saves 26 MB of PSS per pod and costs about 0.5 s of cold start (retranslation).
        public var tcgCacheMiB = 0
        /// Pages the guest frees go back to the host (virtio-balloon free page reporting).
        public var freePageReporting = true

        enum CodingKeys: String, CodingKey {
            case path, kernel, initrd, vcpus, accelerator
            case machineType = "machine_type", memoryMiB = "memory_mib", sharedFS = "shared_fs", msize9p = "msize_9p"
            case kernelParams = "kernel_params", bootTimeout = "boot_timeout"
            case tcgCacheMiB = "tcg_cache_mib", freePageReporting = "free_page_reporting"
        }

        public init() {}

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Hypervisor()
            path = try c.decodeIfPresent(String.self, forKey: .path) ?? d.path
            kernel = try c.decodeIfPresent(String.self, forKey: .kernel) ?? d.kernel
            initrd = try c.decodeIfPresent(String.self, forKey: .initrd) ?? d.initrd
            machineType = try c.decodeIfPresent(String.self, forKey: .machineType) ?? d.machineType
            vcpus = try c.decodeIfPresent(Int.self, forKey: .vcpus) ?? d.vcpus
            memoryMiB = try c.decodeIfPresent(Int.self, forKey: .memoryMiB) ?? d.memoryMiB
            accelerator = try c.decodeIfPresent(String.self, forKey: .accelerator) ?? d.accelerator
            sharedFS = try c.decodeIfPresent(String.self, forKey: .sharedFS) ?? d.sharedFS
            msize9p = try c.decodeIfPresent(Int.self, forKey: .msize9p) ?? d.msize9p
            kernelParams = try c.decodeIfPresent([String].self, forKey: .kernelParams) ?? d.kernelParams
            bootTimeout = try c.decodeIfPresent(Int.self, forKey: .bootTimeout) ?? d.bootTimeout
            tcgCacheMiB = try c.decodeIfPresent(Int.self, forKey: .tcgCacheMiB) ?? d.tcgCacheMiB
            freePageReporting = try c.decodeIfPresent(Bool.self, forKey: .freePageReporting) ?? d.freePageReporting
        }
    }

    public struct Agent: Codable, Sendable, Equatable {
        public var logLevel = "info"
        public var debugConsole = false
        /// Seconds for one agent request (container creation under TCG can take a while).
        public var requestTimeout = 60
        /// Seconds the agent may leave a health check unanswered before the sandbox counts as
        /// dead (QEMU is then killed and every process reported exited, 255); 0: no checks.
        public var healthCheckTimeout = 30

        enum CodingKeys: String, CodingKey {
            case logLevel = "log_level", debugConsole = "debug_console", requestTimeout = "request_timeout"
            case healthCheckTimeout = "health_check_timeout"
        }

        public init() {}

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            logLevel = try c.decodeIfPresent(String.self, forKey: .logLevel) ?? "info"
            debugConsole = try c.decodeIfPresent(Bool.self, forKey: .debugConsole) ?? false
            requestTimeout = try c.decodeIfPresent(Int.self, forKey: .requestTimeout) ?? 60
            healthCheckTimeout = try c.decodeIfPresent(Int.self, forKey: .healthCheckTimeout) ?? 30
        }
    }

    public var hypervisor = Hypervisor()
    public var agent = Agent()

    public init() {}

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        hypervisor = try c.decodeIfPresent(Hypervisor.self, forKey: .hypervisor) ?? Hypervisor()
        agent = try c.decodeIfPresent(Agent.self, forKey: .agent) ?? Agent()
    }

    public static let defaultPath = "/etc/vessel/configuration.toml"
    public static let environmentVariable = "VESSEL_CONFIG"

    /// `explicit` (--config) must exist; otherwise $VESSEL_CONFIG, then the default path, then defaults.
    public static func load(
        explicit: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(RuntimeError) -> (RuntimeConfig, String?) {
        let path = explicit ?? environment[environmentVariable].flatMap { $0.isEmpty ? nil : $0 }
        if let path {
            return (try parse(file: path), path)
        }
        if FileManager.default.fileExists(atPath: defaultPath) { return (try parse(file: defaultPath), defaultPath) }
        return (RuntimeConfig(), nil)
    }

    public static func parse(file path: String) throws(RuntimeError) -> RuntimeConfig {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw RuntimeError("configuration \(path): cannot read file")
        }
        return try parse(text, name: path)
    }

    public static func parse(_ text: String, name: String = "configuration") throws(RuntimeError) -> RuntimeConfig {
        if let problem = abortingTOML(text) { throw RuntimeError("\(name): \(problem)") }
        let config: RuntimeConfig
        do {
            config = try TOMLDecoder(strictDecoding: true).decode(RuntimeConfig.self, from: text)
        } catch let error as UnexpectedKeysError {
            let keys = error.keys.keys.sorted().joined(separator: ", ")
            throw RuntimeError("\(name): unknown key \(keys)")
        } catch let error as DecodingError {
            throw RuntimeError("\(name): \(describe(error))")
        } catch {
            throw RuntimeError("\(name): \(error)")
        }
        try config.validate(name: name)
        return config
    }

    /// What toml++ (inside TOMLKit) would abort the process on instead of reporting: places where its
    /// parser only asserts the next character is right, with the assertions compiled in. A table
    /// header whose name starts with neither a bare-key character nor a quote (`[é]`), and an array
    /// element starting with `}` or a non-ASCII line break (`[ } ]`). Strings, comments and the
    /// arrays and inline tables of values are followed only as far as needed to find those.
    static func abortingTOML(_ text: String) -> String? {
        let chars = Array(text.unicodeScalars)
        // toml++ skips a byte order mark.
        var (i, line, statementStart) = (chars.first == "\u{FEFF}" ? 1 : 0, 1, true)
        var open: [Unicode.Scalar] = []  // the "[" and "{" of values
        var elementDue = false  // after an array's "[" or ","
        func skipBlanks() { while i < chars.count, chars[i] == " " || chars[i] == "\t" { i += 1 } }
        func skipLine() { while i < chars.count, chars[i] != "\n" { i += 1 } }
        while i < chars.count {
            let c = chars[i]
            if c == "\n" {
                line += 1
                statementStart = statementStart || open.isEmpty
                i += 1
                continue
            }
            if c == " " || c == "\t" || c == "\r" {
                i += 1
                continue
            }
            if c == "#" {
                skipLine()
                continue
            }
            if elementDue && (c == "}" || c == "\u{85}" || c == "\u{2028}" || c == "\u{2029}") {
                return "line \(line): an array element cannot start with \(c.escaped(asASCII: true))"
            }
            elementDue = false
            if c == "\"" || c == "'" {
                line += skipString(chars, &i)
            } else if c == "[" && statementStart && open.isEmpty {
                i += 1
                skipBlanks()
                if i < chars.count, chars[i] == "[" {
                    i += 1
                    skipBlanks()
                }
                if i < chars.count, !Self.startsKey(chars[i]) {
                    return "line \(line): a table name must start with a letter, digit, -, _ or a quote"
                }
                skipLine()  // a header (its quoted names included) ends on its line
                continue
            } else {
                if c == "[" || c == "{" { open.append(c) }
                if c == "]" || c == "}" { _ = open.popLast() }
                elementDue = (c == "[" || c == ",") && open.last == "["
                i += 1
            }
            statementStart = false
        }
        return nil
    }

    private static func startsKey(_ c: Unicode.Scalar) -> Bool {
        c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || "-_\"']".unicodeScalars.contains(c))
    }

    /// Moves `i` past the string that starts there (basic or literal, one line or three quotes);
    /// returns the newlines it spans.
    private static func skipString(_ chars: [Unicode.Scalar], _ i: inout Int) -> Int {
        let quote = chars[i]
        let triple = i + 2 < chars.count && chars[i + 1] == quote && chars[i + 2] == quote
        i += triple ? 3 : 1
        var newlines = 0
        while i < chars.count {
            let c = chars[i]
            if c == "\\" && quote == "\"" {
                if i + 1 < chars.count, chars[i + 1] == "\n" {
                    if !triple {
                        i += 1
                        return newlines
                    }
                    newlines += 1
                }
                i += 2
                continue
            }
            if c == "\n" {
                if !triple { return newlines }  // unterminated: the parser reports it
                newlines += 1
            }
            if c == quote && (!triple || (i + 2 < chars.count && chars[i + 1] == quote && chars[i + 2] == quote)) {
                i += triple ? 3 : 1
                return newlines
            }
            i += 1
        }
        return newlines
    }

    func validate(name: String) throws(RuntimeError) {
        if VMConfig.Machine(rawValue: hypervisor.machineType) == nil {
            throw RuntimeError("\(name): hypervisor.machine_type \"\(hypervisor.machineType)\" is not q35 or microvm")
        }
        if VMConfig.Accelerator(rawValue: hypervisor.accelerator) == nil {
            throw RuntimeError("\(name): hypervisor.accelerator \"\(hypervisor.accelerator)\" is not auto, kvm or tcg")
        }
        if hypervisor.sharedFS != "9p" {
            throw RuntimeError("\(name): hypervisor.shared_fs \"\(hypervisor.sharedFS)\" is not supported (9p)")
        }
        if !(1...64).contains(hypervisor.vcpus) { throw RuntimeError("\(name): hypervisor.vcpus \(hypervisor.vcpus) is not in 1...64") }
        if hypervisor.memoryMiB < 64 { throw RuntimeError("\(name): hypervisor.memory_mib \(hypervisor.memoryMiB) is below 64") }
        if !(0...2048).contains(hypervisor.tcgCacheMiB) {
            throw RuntimeError("\(name): hypervisor.tcg_cache_mib \(hypervisor.tcgCacheMiB) is not in 0...2048")
        }
        if !(8192...(16 << 20)).contains(hypervisor.msize9p) {
            throw RuntimeError("\(name): hypervisor.msize_9p \(hypervisor.msize9p) is not in 8192...16777216")
        }
        if agent.requestTimeout < 1 { throw RuntimeError("\(name): agent.request_timeout \(agent.requestTimeout) is below 1") }
        if agent.healthCheckTimeout < 0 {
            throw RuntimeError("\(name): agent.health_check_timeout \(agent.healthCheckTimeout) is negative")
        }
        if !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(agent.logLevel) {
            throw RuntimeError("\(name): agent.log_level \"\(agent.logLevel)\" is not a log level")
        }
    }

    /// The guest files must exist before anything is created; the message says where the built-in
    /// default looked and which make target provides them.
    public func checkGuestFiles() throws(RuntimeError) {
        let qemu = "hypervisor.path (QEMU)"
        if !FileManager.default.fileExists(atPath: hypervisor.path) {
            throw RuntimeError("\(qemu) \(hypervisor.path) does not exist (apt-get install qemu-system-x86 provides it)")
        }
        for (key, path, name, target) in [
            ("hypervisor.kernel", hypervisor.kernel, "bzImage", "make kernel"),
            ("hypervisor.initrd", hypervisor.initrd, "initrd.img", "make initrd"),
        ]
        where !FileManager.default.fileExists(atPath: path) {
            if path == GuestFiles.find(name) {
                let places = GuestFiles.directories().joined(separator: " or ")
                throw RuntimeError("\(key): no \(name) in \(places) (\(target) builds it, make install installs it, or set \(key))")
            }
            throw RuntimeError("\(key) \(path) does not exist (\(target) provides it)")
        }
    }

    public func toml() -> String {
        (try? TOMLEncoder().encode(self)) ?? ""
    }
}

/// "process.args[0]: expected String, found number" from a DecodingError.
func describe(_ error: DecodingError) -> String {
    func path(_ keys: [any CodingKey]) -> String {
        var out = ""
        for key in keys {
            if let index = key.intValue { out += "[\(index)]" } else { out += (out.isEmpty ? "" : ".") + key.stringValue }
        }
        return out.isEmpty ? "(top level)" : out
    }
    switch error {
    case .typeMismatch(let type, let context):
        return "\(path(context.codingPath)): expected \(type)" + (context.debugDescription.isEmpty ? "" : " (\(context.debugDescription))")
    case .valueNotFound(let type, let context):
        return "\(path(context.codingPath)): missing \(type) value"
    case .keyNotFound(let key, let context):
        return "\(path(context.codingPath + [key])): required field missing"
    case .dataCorrupted(let context):
        let underlying = (context.underlyingError as? NSError)?.userInfo[NSDebugDescriptionErrorKey] as? String
        return "\(path(context.codingPath)): \(underlying ?? context.debugDescription)"
    @unknown default:
        return "\(error)"
    }
}

/// Where the built-in defaults find the guest kernel and initrd: next to the executable (make's
/// out/), then `<prefix>/share/vessel` for an executable in `<prefix>/bin` (make install).
public enum GuestFiles {
    public static func directories(executable: String = executablePath()) -> [String] {
        let bin = URL(fileURLWithPath: executable).deletingLastPathComponent()
        let share = bin.deletingLastPathComponent().appendingPathComponent("share/vessel")
        return [bin.path, share.path]
    }

    /// The first candidate that exists, else the first one (for the error that says where it looked).
    public static func find(_ name: String, executable: String = executablePath()) -> String {
        let candidates = directories(executable: executable).map { $0 + "/" + name }
        return candidates.first { FileManager.default.fileExists(atPath: $0) } ?? candidates[0]
    }

    public static func executablePath() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}
