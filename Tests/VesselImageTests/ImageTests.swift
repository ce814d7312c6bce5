import Testing
import VesselImage

@Test func placeholder() {}
