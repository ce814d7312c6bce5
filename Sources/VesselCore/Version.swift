public enum VesselVersion {
    public static let string = "0.2.0"
}
