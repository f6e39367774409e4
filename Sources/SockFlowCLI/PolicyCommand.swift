#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CSockFlowABI
import SockFlowBPF
import SockFlowCore

/// `sockflow policy`: check a policy file, or remove pinned enforcement.
struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Check a policy, or remove the enforcement --persist left behind.",
        subcommands: [Check.self, Unload.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a policy file and print its rules as compiled.",
            discussion: "Exit 0 if the policy is valid; else one line 'file:line:column: what is wrong' on stderr and exit 1.")

        @Argument(help: ArgumentHelp("The policy file (YAML).", valueName: "file"))
        var file: String

        func run() throws {
            do {
                let policy = try PolicyParser.load(path: file)
                let compiled = PolicyCompiler.compile(policy)
                print(policy.summary)
                let perHook = Policy.Hook.allCases.compactMap { h -> String? in
                    let n = compiled.hookRules[h.index].count
                    return n == 0 ? nil : "\(h.rawValue) \(n)"
                }
                print("kernel: \(compiled.rules.count) of \(SF_MAX_RULES) rule slots; rules per hook: "
                      + (perHook.isEmpty ? "none" : perHook.joined(separator: ", ")))
            } catch {
                CLIError.report(error)
                throw ExitCode(1)
            }
        }
    }

    struct Unload: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove enforcement pinned by 'monitor --persist' (its programs detach).")

        func run() throws {
            let n = MonitorProgram.removePins()
            print(n == 0 ? "no pinned enforcement in \(MonitorProgram.pinDirectory)"
                         : "removed \(n) pinned enforcement link\(n == 1 ? "" : "s") from \(MonitorProgram.pinDirectory)")
        }
    }
}
