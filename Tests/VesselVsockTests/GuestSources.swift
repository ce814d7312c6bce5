import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The test guest's /init (`guest-init.c`, compiled with `gcc -static` by the VM tests): AF_VSOCK
/// servers inside the guest. A path beside this file: the sources are there when tests run.
func guestSource(_ name: String) throws -> String {
    let here = String(#filePath)
    let path = String(here[..<here.lastIndex(of: "/")!]) + "/" + name
    try #require(access(path, R_OK) == 0, "\(path) is missing")
    return path
}
