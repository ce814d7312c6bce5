import Foundation
import Testing
import VesselTestSupport

@testable import VesselImage

@Suite("cpio writer", .timeLimit(.minutes(1)))
struct CPIOWriterTests {
    @Test("header fields, name and data padding, trailer")
    func headerLayout() throws {
        var writer = CPIOWriter(mtime: 0x5F)
        try writer.append(name: "ab", type: .regular, permissions: 0o644, contents: Array("xyz".utf8))
        try writer.append(name: "d", type: .characterDevice, permissions: 0o600, rdevMajor: 5, rdevMinor: 1)
        let bytes = writer.finish()
        let zero = "00000000"
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
        let expected =
            "070701" + "00000001" + "000081A4" + zero + zero + "00000001" + "0000005F" + "00000003" + zero + zero + zero + zero
            + "00000003" + zero + "ab\0" + "\0\0\0"  // 110 + 3 = 113, padded to 116
            + "xyz" + "\0"  // 3 padded to 4
            + "070701" + "00000002" + "00002180" + zero + zero + "00000001" + "0000005F" + zero + zero + zero + "00000005"
            + "00000001" + "00000002" + zero + "d\0"  // 110 + 2 = 112, aligned
            + "070701" + zero + zero + zero + zero + "00000001" + "0000005F" + zero + zero + zero + zero + zero
            + "0000000B" + zero + "TRAILER!!!\0" + "\0\0\0"  // 110 + 11 = 121, padded to 124
        #expect(String(decoding: bytes, as: UTF8.self) == expected)
        #expect(bytes.count == 116 + 4 + 112 + 124)
        #expect(writer.count == 2)
    }
}

@Suite("manifest", .timeLimit(.minutes(1)))
struct ManifestTests {
    @Test("all four entry types, comments and blank lines")
    func parses() throws {
        let text = """
            # comment
            dir /etc 0755   # trailing comment

            file /etc/passwd 0644 files/etc/passwd
            file /bin/busybox 0755 /bin/busybox
            symlink /bin/sh busybox
            nod /dev/console 0600 c 5 1
            nod /dev/vda 0660 b 254 0
            """
        let entries = try Manifest.parse(text, name: "m", base: "/r")
        #expect(entries.map(\.path) == ["/etc", "/etc/passwd", "/bin/busybox", "/bin/sh", "/dev/console", "/dev/vda"])
        #expect(entries.map(\.line) == [2, 4, 5, 6, 7, 8])
        #expect(entries[0].kind == .directory && entries[0].mode == 0o755)
        #expect(entries[1].kind == .file(source: "/r/files/etc/passwd"))
        #expect(entries[2].kind == .file(source: "/bin/busybox"))
        #expect(entries[3].kind == .symlink(target: "busybox") && entries[3].mode == 0o777)
        #expect(entries[4].kind == .device(block: false, major: 5, minor: 1) && entries[4].mode == 0o600)
        #expect(entries[5].kind == .device(block: true, major: 254, minor: 0))
    }

    @Test(
        "parse errors name the line",
        arguments: [
            ("dir /a 0755\n\nfifo /b 0644", 3, "unknown entry type 'fifo'"),
            ("dir /a 0755 extra", 1, "'dir' takes 2 fields, found 3"),
            ("# c\nfile /a 0644", 2, "'file' takes 3 fields"),
            ("dir etc 0755", 1, "must be absolute"),
            ("dir /etc/../x 0755", 1, "must be absolute and normalized"),
            ("dir /etc/ 0755", 1, "must be absolute and normalized"),
            ("dir / 0755", 1, "must be absolute and normalized"),
            ("dir /a 0755\ndir /b 0999", 2, "bad mode '0999'"),
            ("dir /a 17777", 1, "bad mode"),
            ("nod /console 0600 x 5 1", 1, "device type must be 'c' or 'b'"),
            ("nod /console 0600 c 5 one", 1, "bad device number"),
            ("nod /console 0600 c 4096 0", 1, "bad device number"),
        ])
    func parseError(text: String, line: Int, message: String) {
        #expect {
            try Manifest.parse(text, name: "rootfs/manifest", base: "/r")
        } throws: { error in
            let error = error as! ImageError
            return error.line == line && error.message.contains(message) && "\(error)".hasPrefix("rootfs/manifest:\(line): ")
        }
    }

    @Test(
        "consistency errors name the line",
        arguments: [
            ("dir /etc 0755\nfile /etc/a/b 0644 x", 2, "parent directory /etc/a is not declared"),
            ("file /etc 0644 x\nfile /etc/passwd 0644 y", 2, "parent directory /etc is not declared"),
            ("dir /etc 0755\n\ndir /etc 0700", 3, "duplicate path /etc (also at line 1)"),
        ])
    func consistencyError(text: String, line: Int, message: String) throws {
        let entries = try Manifest.parse(text, name: "m", base: "/r")
        #expect {
            try Manifest.sortedAndChecked(entries)
        } throws: { error in
            let error = error as! ImageError
            return error.line == line && error.message.contains(message)
        }
    }

    @Test("sorting puts parents first regardless of manifest order")
    func sorted() throws {
        let text = "file /etc/passwd 0644 p\ndir /etc-x 0755\ndir /etc 0755\ndir /etc/ssl 0755\ndir /a 0755"
        let entries = try Manifest.sortedAndChecked(try Manifest.parse(text, name: "m", base: "/r"))
        #expect(entries.map(\.path) == ["/a", "/etc", "/etc-x", "/etc/passwd", "/etc/ssl"])
    }

    @Test("the repository's rootfs/ parses and has what the guest needs")
    func repositoryRootfs() throws {
        let entries = try ImageBuilder(agent: "/agent", rootfs: repoRootfs).entries()
        let byPath = Dictionary(uniqueKeysWithValues: entries.map { ($0.path, $0) })
        #expect(byPath["/dev/console"]?.kind == .device(block: false, major: 5, minor: 1))
        #expect(byPath["/dev/console"]?.mode == 0o600)
        #expect(byPath["/init"] == Entry(path: "/init", mode: 0o755, kind: .file(source: "/agent")))
        for path in ["/proc", "/sys", "/dev", "/run", "/run/kata-containers", "/tmp", "/etc", "/sbin", "/bin", "/usr/bin", "/root", "/var"]
        {
            #expect(byPath[path]?.kind == .directory, "\(path)")
        }
        #expect(byPath["/tmp"]?.mode == 0o1777)
        for file in ["passwd", "group", "hosts", "hostname", "nsswitch.conf", "os-release"] {
            #expect(byPath["/etc/" + file]?.kind == .file(source: repoRootfs + "/files/etc/" + file))
        }
        let osRelease = try String(contentsOfFile: repoRootfs + "/files/etc/os-release", encoding: .utf8)
        #expect(osRelease.contains("NAME=\"Vessel\""))
        #expect(byPath["/bin/busybox"] == nil)
    }

    @Test(
        "--debug adds busybox and its applet links",
        .enabled(if: FileManager.default.fileExists(atPath: "/bin/busybox"), "needs busybox-static"))
    func debugEntries() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let builder = ImageBuilder(agent: try fakeAgent(in: directory), rootfs: repoRootfs, debug: true)
        let entries = Dictionary(uniqueKeysWithValues: try readCPIO(try builder.archive().bytes).map { ($0.name, $0) })
        #expect(entries["bin/busybox"]?.mode == 0o100755)
        #expect(entries["bin/busybox"]?.data == Array(try Data(contentsOf: URL(fileURLWithPath: "/bin/busybox"))))
        for applet in ["sh", "ls", "cat", "ps", "mount", "dmesg", "ip"] {
            #expect(entries["bin/" + applet]?.text == "busybox", "\(applet)")
            #expect(entries["bin/" + applet]?.mode == 0o120777, "\(applet)")
        }
    }
}

@Suite("image builder", .timeLimit(.minutes(1)))
struct ImageBuilderTests {
    /// A small rootfs with one of each entry type, listed out of order.
    func smallRootfs(in directory: String) throws -> String {
        let rootfs = directory + "/rootfs"
        try write(
            """
            symlink /bin/sh busybox
            file /etc/passwd 0644 files/passwd
            dir /bin 0755
            nod /dev/console 0600 c 5 1
            dir /etc 0755
            dir /dev 0755
            dir /tmp 1777
            """, to: rootfs + "/manifest")
        try write("root:x:0:0:root:/root:/bin/sh\n", to: rootfs + "/files/passwd")
        return rootfs
    }

    @Test("the archive parses back: sorted names, inodes, modes, contents")
    func parseBack() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let agent = try fakeAgent(in: directory)
        let (bytes, count) = try ImageBuilder(agent: agent, rootfs: try smallRootfs(in: directory), mtime: 1_700_000_000).archive()
        let entries = try readCPIO(bytes)
        #expect(count == 8)
        #expect(entries.map(\.name) == ["bin", "bin/sh", "dev", "dev/console", "etc", "etc/passwd", "init", "tmp"])
        #expect(entries.map(\.inode) == Array(1...8))
        #expect(entries.allSatisfy { $0.uid == 0 && $0.gid == 0 && $0.mtime == 1_700_000_000 })
        let byName = Dictionary(uniqueKeysWithValues: entries.map { ($0.name, $0) })
        #expect(byName["bin"]?.mode == 0o040755)
        #expect(byName["bin"]?.nlink == 2)
        #expect(byName["tmp"]?.mode == 0o041777)
        #expect(byName["bin/sh"]?.mode == 0o120777)
        #expect(byName["bin/sh"]?.text == "busybox")
        #expect(byName["dev/console"]?.mode == 0o020600)
        #expect(byName["dev/console"].map { ($0.rdevMajor, $0.rdevMinor) } ?? (0, 0) == (5, 1))
        #expect(byName["etc/passwd"]?.mode == 0o100644)
        #expect(byName["etc/passwd"]?.text == "root:x:0:0:root:/root:/bin/sh\n")
        #expect(byName["init"]?.mode == 0o100755)
        #expect(byName["init"]?.nlink == 1)
        #expect(byName["init"]?.data == Array(try Data(contentsOf: URL(fileURLWithPath: agent))))
    }

    @Test("SOURCE_DATE_EPOCH sets the mtime")
    func sourceDateEpoch() throws {
        #expect(try ImageBuilder.mtime(environment: [:]) == 0)
        #expect(try ImageBuilder.mtime(environment: ["SOURCE_DATE_EPOCH": "1700000000"]) == 1_700_000_000)
        #expect(throws: ImageError.self) { try ImageBuilder.mtime(environment: ["SOURCE_DATE_EPOCH": "soon"]) }
    }

    @Test("a missing agent fails clearly and leaves no output")
    func missingAgent() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let builder = ImageBuilder(agent: directory + "/no-agent", rootfs: try smallRootfs(in: directory))
        #expect(throws: ImageError("agent \(directory)/no-agent: no such file")) {
            try builder.build(output: directory + "/out/initrd.img")
        }
        #expect(!FileManager.default.fileExists(atPath: directory + "/out"))
    }

    @Test("a missing source file names the manifest line and leaves no output", arguments: Compression.allCases)
    func missingSource(compression: Compression) throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let rootfs = try smallRootfs(in: directory)
        try FileManager.default.removeItem(atPath: rootfs + "/files/passwd")
        try FileManager.default.createDirectory(atPath: directory + "/out", withIntermediateDirectories: false)
        let builder = ImageBuilder(agent: try fakeAgent(in: directory), rootfs: rootfs)
        #expect(throws: ImageError("/etc/passwd: source \(rootfs)/files/passwd: no such file", file: rootfs + "/manifest", line: 2)) {
            try builder.build(output: directory + "/out/initrd.img", compression: compression)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory + "/out") == [])
    }

    @Test("/init is reserved for the agent")
    func initReserved() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try write("dir /etc 0755\nfile /init 0755 files/init\n", to: directory + "/manifest")
        #expect(throws: ImageError("/init is reserved for the agent (--agent)", file: directory + "/manifest", line: 2)) {
            try ImageBuilder(agent: "/agent", rootfs: directory).entries()
        }
    }

    @Test(
        "building twice gives identical bytes, and decompression gives the archive back",
        .enabled(
            if: installed("zstd") && installed("lz4") && installed("gzip"), "needs zstd, lz4 and gzip (apt-get install -y zstd lz4 gzip)"),
        arguments: Compression.allCases)
    func reproducible(compression: Compression) throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let builder = ImageBuilder(agent: try fakeAgent(in: directory), rootfs: repoRootfs)
        let first = try builder.build(output: directory + "/one", compression: compression)
        let second = try builder.build(output: directory + "/two", compression: compression)
        #expect(first.output == directory + "/one")
        #expect(first.entries == second.entries)
        let one = try Data(contentsOf: URL(fileURLWithPath: directory + "/one"))
        let two = try Data(contentsOf: URL(fileURLWithPath: directory + "/two"))
        #expect(one == two)
        #expect(one.count == first.compressedSize)
        // Only the two outputs: the temporary files are gone.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == ["agent", "one", "two"])

        let archive = try builder.archive().bytes
        #expect(first.uncompressedSize == archive.count)
        let decompressed: [UInt8]
        switch compression {
        case .zstd:
            decompressed = try runCommand(["/usr/bin/zstd", "-d", "-c", "-q"], input: .file(directory + "/one"), timeout: 120).stdout
        case .lz4:
            decompressed = try runCommand(["/usr/bin/lz4", "-d", "-c", "-q"], input: .file(directory + "/one"), timeout: 120).stdout
        case .gzip: decompressed = try runCommand(["/usr/bin/gzip", "-d", "-c"], input: .file(directory + "/one"), timeout: 120).stdout
        case .none: decompressed = Array(one)
        }
        #expect(decompressed == archive)
        if compression != .none { #expect(one.count < archive.count) }
    }

    @Test(
        "GNU cpio lists the archive",
        .enabled(if: installed("cpio") && installed("lz4"), "needs cpio and lz4 (apt-get install -y cpio lz4)"))
    func cpioLists() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let builder = ImageBuilder(agent: try fakeAgent(in: directory), rootfs: repoRootfs)
        let result = try builder.build(output: directory + "/initrd.img", compression: .lz4)
        let unpacked = try runCommand(
            ["/usr/bin/lz4", "-d", "-q", "-f", directory + "/initrd.img", directory + "/initrd.cpio"], timeout: 120)
        #expect(unpacked.status == 0, "\(unpacked.errors)")

        let names = try runCommand(["/usr/bin/cpio", "-it", "--quiet"], input: .file(directory + "/initrd.cpio"), timeout: 120)
        #expect(names.status == 0, "\(names.errors)")
        let listed = String(decoding: names.stdout, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(listed.contains("init"))
        #expect(listed.contains("etc/passwd"))
        #expect(listed.count == result.entries)

        let verbose = try runCommand(["/usr/bin/cpio", "-itv", "--quiet"], input: .file(directory + "/initrd.cpio"), timeout: 120)
        let lines = String(decoding: verbose.stdout, as: UTF8.self).split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("-rwxr-xr-x") && $0.hasSuffix(" init") })
        #expect(lines.contains { $0.hasPrefix("crw-------") && $0.contains("5,   1") && $0.hasSuffix(" dev/console") })
        #expect(lines.contains { $0.hasPrefix("drwxrwxrwt") && $0.hasSuffix(" tmp") })
    }
}
