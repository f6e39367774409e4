#if canImport(Glibc)
import Glibc
#endif
import SockFlowCore

/// Fixed decimals without Foundation.
func fmt(_ v: Double, _ places: Int = 2) -> String {
    var scale = 1.0
    for _ in 0..<places { scale *= 10 }
    let r = (v * scale).rounded() / scale
    var s = String(r)
    if let dot = s.firstIndex(of: ".") {
        let decimals = s.distance(from: dot, to: s.endIndex) - 1
        if decimals < places { s += String(repeating: "0", count: places - decimals) }
    }
    return s
}

// sockflow-bench consumer [cycles] [rounds] [output]
//   decode + flow table + owner lookup + JSON + write(2), one thread.
let args = CommandLine.arguments
guard args.count >= 2, args[1] == "consumer" else {
    print("usage: sockflow-bench consumer [cycles=500000] [rounds=5] [output=/dev/null]")
    exit(2)
}
let cycles = args.count > 2 ? Int(args[2]) ?? 500_000 : 500_000
let rounds = args.count > 3 ? Int(args[3]) ?? 5 : 5
let path = args.count > 4 ? args[4] : "/dev/null"
let samples = ConsumerBench.samples(cycles: cycles)
var rates: [Double] = []
for r in 1...rounds {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    let (records, secs, bytes) = ConsumerBench.run(samples, fd: fd)
    close(fd)
    let rate = Double(records) / secs
    rates.append(rate)
    print("round \(r): \(records) records in \(fmt(secs, 3)) s = \(fmt(rate / 1e6)) M records/s, \(bytes / records) bytes/record")
}
rates.sort()
let median = fmt(rates[rates.count / 2] / 1e6), low = fmt(rates.first! / 1e6), high = fmt(rates.last! / 1e6)
print("consumer: median \(median) M records/s (min \(low), max \(high)) on one core, output \(path)")
