//! A process's memory and CPU time as Linux reports them in `/proc`, for benches that
//! state a cost per conversation or per request.

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`, ...).
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// User + system CPU time of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap()).1
}

/// User + system CPU time of `pid`'s threads whose name starts with `prefix`, in ticks.
pub fn thread_cpu_ticks(pid: u32, prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .map(|stat| stat_ticks(&stat))
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, ticks)| ticks)
        .sum()
}

/// The thread's name and its utime + stime from one `stat` line. The name sits in
/// parentheses and may itself hold spaces, so fields are counted after the last `)`.
fn stat_ticks(stat: &str) -> (String, u64) {
    let open = stat.find('(').map_or(0, |i| i + 1);
    let close = stat.rfind(')').expect("a stat line has a name");
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (stat[open..close].to_owned(), ticks)
}

pub fn clock_ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// Resets `pid`'s peak resident memory (`VmHWM:`) to its current RSS, so a bench can read
/// the peak of one phase after another (Linux's `clear_refs`, value 5).
pub fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_name_and_cpu_ticks() {
        let line = "4242 (tokio rt) worker) S 1 2 3 4 5 6 7 8 9 10 120 35 0 0 20 0";
        assert_eq!(stat_ticks(line), ("tokio rt) worker".to_owned(), 155));
    }

    #[test]
    fn this_process_has_cpu_time_and_a_resident_set() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_ticks(pid) > 0);
        assert!(thread_cpu_ticks(pid, "") > 0);
        assert_eq!(thread_cpu_ticks(pid, "no thread is named so"), 0);
        assert!(status_kib(pid, "VmRSS:") > 0);
    }
}
