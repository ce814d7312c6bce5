import Testing
@testable import VesselVsock

@Test func vsockPlaceholder() {}
