import Testing

@testable import VesselCore

/// Configuration files on which toml++ (inside TOMLKit, with its assertions compiled in) aborted the
/// process instead of reporting an error; found by fuzzing (Fuzz/, fuzz-config-toml).
@Suite(.timeLimit(.minutes(2)))
struct ConfigTOMLAbortTests {
    /// Fuzz/Corpus/config-toml/crash-table-name-not-a-key
    @Test func tableNameStartingWithNoKeyCharacterIsAnError() {
        for text in ["[hypervisor]\nvcpus = 2\n[é]\n", "[ !x]", "[[\u{0}]]", "\u{FEFF}[\n]", "[agent]\n  [ #]"] {
            expectError("table name must start with") { _ = try RuntimeConfig.parse(text) }
        }
        expectError("line 3:") { _ = try RuntimeConfig.parse("# one\nvcpus = 1\n[é]") }
    }

    /// Fuzz/Corpus/config-toml/crash-array-element-brace
    @Test func arrayElementStartingWithABraceIsAnError() {
        for text in ["[hypervisor]\nkernel_params = [ \"quiet\", } ]\n", "a = [\n # c\n }", "a = [[1], \u{2028}]"] {
            expectError("an array element cannot start with") { _ = try RuntimeConfig.parse(text) }
        }
    }

    /// The same characters inside strings, comments, values and quoted names are left to TOML.
    @Test func lookalikesInStringsAndCommentsStillParse() throws {
        let text = """
            # [é] and [ } ]
            ["hypervisor"]
            kernel_params = ["[é]", '}', \"\"\"
            [é]
            \"\"\", "a\\"[é]"]
            path = "/usr/bin/qemu-system-x86_64" # [ }
            """
        let config = try RuntimeConfig.parse(text)
        #expect(config.hypervisor.kernelParams == ["[é]", "}", "[é]\n", "a\"[é]"])
    }
}
