import VesselAgent

// Helper mode first and synchronously: the helper must stay single-threaded, so no task, executor
// or event loop may start before this check.
if CommandLine.arguments.count >= 3, CommandLine.arguments[1] == Helper.argument {
    Helper.main(mode: CommandLine.arguments[2])
}
Agent.main(Array(CommandLine.arguments.dropFirst()))
