import Foundation
import Testing
import VesselCore
import VesselTestSupport

/// What `make` built (out/): the files `make install` installs.
let builtOut = ProcessInfo.processInfo.environment["VESSEL_OUT"]

/// `make install` into a DESTDIR, then the installed `vessel` run from a directory without out/.
@Suite(
    .serialized, .timeLimit(.minutes(5)),
    .enabled(if: builtOut != nil && VesselCLI.guestAvailable, "VESSEL_OUT not set (make test sets it)"))
struct InstallTests {
    static let out = builtOut
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    func make(_ target: String, destdir: String) throws -> VesselCLI.Result {
        let make = try runCommand(
            ["/usr/bin/make", "-C", Self.repository, "--no-print-directory", target, "DESTDIR=\(destdir)", "OUT=\(Self.out!)"],
            mergingErrors: true, timeout: 120)
        return VesselCLI.Result(status: make.status, stdout: make.output, stderr: "")
    }

    @Test func installedVesselRunsAContainerWithItsOwnGuestFiles() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let destdir = cli.directory + "/dest"
        var result = try make("install-files", destdir: destdir)
        #expect(result.status == 0, "\(result.stdout)")
        let prefix = destdir + "/usr/local"
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: prefix + "/bin/containerd-shim-vessel-v2")) == "vessel")
        for file in ["bin/vessel", "share/vessel/bzImage", "share/vessel/initrd.img", "share/vessel/initrd-debug.img"] {
            #expect(FileManager.default.fileExists(atPath: prefix + "/" + file), "\(file) not installed")
        }

        // The default configuration is the built-in defaults, pointing at the installed guest files.
        let configPath = destdir + "/etc/vessel/configuration.toml"
        let installed = try RuntimeConfig.parse(file: configPath)
        #expect(installed.hypervisor.kernel == "/usr/local/share/vessel/bzImage")
        #expect(installed.hypervisor.initrd == "/usr/local/share/vessel/initrd.img")
        var defaults = RuntimeConfig()
        defaults.hypervisor.kernel = installed.hypervisor.kernel
        defaults.hypervisor.initrd = installed.hypervisor.initrd
        #expect(installed == defaults, "packaging/configuration.toml and RuntimeConfig's defaults differ")

        // Never overwritten.
        try (String(contentsOfFile: configPath, encoding: .utf8) + "# edited\n").write(
            toFile: configPath, atomically: true, encoding: .utf8)
        result = try make("install-files", destdir: destdir)
        #expect(result.status == 0 && result.stdout.contains("keeping"), "\(result.stdout)")
        #expect(try String(contentsOfFile: configPath, encoding: .utf8).hasSuffix("# edited\n"))

        // Built-in defaults (an empty configuration) from a directory without out/: <prefix>/share/vessel.
        let accelerator = ProcessInfo.processInfo.environment["VESSEL_ACCEL"] ?? "auto"
        try "[hypervisor]\naccelerator = \"\(accelerator)\"\n".write(toFile: cli.config, atomically: true, encoding: .utf8)
        let elsewhere = cli.directory + "/elsewhere"
        try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: true)
        let vessel = prefix + "/bin/vessel"
        result = try cli.run(["check"], binary: vessel, workingDirectory: elsewhere)
        #expect(result.stdout.contains("guest kernel \(prefix)/share/vessel/bzImage"), "\(result.stdout)")
        #expect(result.stdout.contains("guest initrd \(prefix)/share/vessel/initrd.img"), "\(result.stdout)")
        let bundle = try cli.bundle(["sh", "-c", "echo installed-vessel-says-hi"])
        result = try cli.run(["run", "--bundle", bundle, "i1"], binary: vessel, workingDirectory: elsewhere)
        #expect(result.status == 0 && result.stdout.contains("installed-vessel-says-hi"), "\(result.stderr)")
        try cli.expectNothingLeft("i1")

        result = try make("uninstall", destdir: destdir)
        #expect(result.status == 0, "\(result.stdout)")
        #expect(!FileManager.default.fileExists(atPath: vessel))
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: prefix + "/bin/containerd-shim-vessel-v2")) == nil)
        #expect(!FileManager.default.fileExists(atPath: prefix + "/share/vessel"))
        #expect(FileManager.default.fileExists(atPath: configPath), "an edited configuration must stay")
    }

    /// A `vessel` with no guest files near it says where the built-in defaults looked.
    @Test func withoutGuestFilesTheErrorSaysWhereItLooked() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        let bin = cli.directory + "/build/release"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.out! + "/vessel", toPath: bin + "/vessel")
        try "".write(toFile: cli.config, atomically: true, encoding: .utf8)
        let bundle = try cli.bundle(["true"])
        let result = try cli.run(["create", "--bundle", bundle, "n1"], binary: bin + "/vessel")
        #expect(result.status == 1)
        #expect(
            result.stderr.contains("hypervisor.kernel: no bzImage in \(bin) or \(cli.directory)/build/share/vessel"),
            "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
        try cli.expectNothingLeft("n1")
        let check = try cli.run(["check"], binary: bin + "/vessel")
        #expect(check.status == 1 && check.stdout.contains("FAIL guest kernel \(bin)/bzImage"), "\(check.stdout)")
    }

    /// Every sandbox's QEMU runs under -sandbox: a QEMU built without seccomp would fail each
    /// boot, so `vessel check` says so first.
    @Test func checkProbesQEMUsSeccompSandbox() throws {
        let cli = try VesselCLI()
        defer { cli.cleanUp() }
        var check = try cli.run(["check"])
        #expect(check.stdout.contains("ok   QEMU runs under its seccomp sandbox"), "\(check.stdout)")
        // As a QEMU without libseccomp answers.
        let fake = cli.directory + "/qemu-without-seccomp"
        try """
        #!/bin/sh
        case "$*" in *"-device help"*) echo 'name "vhost-user-vsock-pci"'; echo 'name "virtio-9p-pci"'; exit 0 ;; esac
        case "$*" in *-sandbox*) echo "qemu: -sandbox on: There is no option group 'sandbox'" >&2; exit 1 ;; esac
        exit 0
        """.write(toFile: fake, atomically: true, encoding: .utf8)
        chmod(fake, 0o755)
        try "[hypervisor]\npath = \"\(fake)\"\n".write(toFile: cli.config, atomically: true, encoding: .utf8)
        check = try cli.run(["check"])
        #expect(
            check.status == 1
                && check.stdout.contains(
                    "FAIL QEMU runs under its seccomp sandbox (-sandbox) -> qemu: -sandbox on: There is no option group 'sandbox'"),
            "\(check.stdout)")
    }
}
