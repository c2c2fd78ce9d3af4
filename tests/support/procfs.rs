//! What a process has used so far, from `/proc`, for the benches' RSS and CPU lines.
//! Linux only; an unreadable file reads as 0.

/// Resident set size in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// CPU time (user + system) used so far, in microseconds (the kernel counts 100 ticks
/// per second, so it moves in steps of 10 ms).
pub fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // `rest` starts at the 3rd field (state).
    (field(14 - 3) + field(15 - 3)) * 1e6 / 100.0
}

/// Read and write system calls made so far (`syscr`, `syscw` of `/proc/<pid>/io`): on
/// loopback each write also runs the receiver's network stack, so writes per call
/// explain much of a front's CPU.
pub fn syscalls(pid: u32) -> (f64, f64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field("syscr:"), field("syscw:"))
}
