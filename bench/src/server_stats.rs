//! The server's resident memory and CPU time, read from `/proc/<pid>`.

/// A snapshot of the server process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Resident set size in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Its anonymous part in KiB (`RssAnon`: the heap, not files mapped into memory).
    pub anon_kib: u64,
    /// User plus system CPU time in milliseconds.
    pub cpu_ms: u64,
}

/// Reads a snapshot; `None` when there is no pid or the process is gone.
pub fn read(pid: Option<u32>) -> Option<Snapshot> {
    let pid = pid?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let anon_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(rss_kib);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel reports CPU time in clock ticks, 100 per second on Linux.
    Some(Snapshot { rss_kib, anon_kib, cpu_ms: ticks * 10 })
}
