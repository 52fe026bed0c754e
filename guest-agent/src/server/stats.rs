//! `stats` and `ps`: figures read from /proc.
//!
//! The container's processes are the running processes started by
//! `start`/`exec`, the agent's other direct children (in the guest: orphans
//! reparented to PID 1), and all their descendants, found by one scan of
//! /proc/*/stat. Only these two methods scan /proc; startup never does.

use std::collections::{HashMap, HashSet};

use crate::protocol::{CpuStats, MemoryStats, ProcessId};

/// One line of /proc/PID/stat, the fields used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Pid.
    pub pid: i32,
    /// Parent pid.
    pub ppid: i32,
    /// utime + cutime, clock ticks.
    pub user_ticks: u64,
    /// stime + cstime, clock ticks.
    pub system_ticks: u64,
}

/// Parses /proc/PID/stat text (`man 5 proc`): the fields after the `)` that
/// ends `comm` are state(3) ppid(4) … utime(14) stime(15) cutime(16) cstime(17).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let pid = text.split_whitespace().next()?.parse().ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<i64>().ok());
    let ticks = |i: usize| num(i).map(|v| v.max(0) as u64);
    Some(ProcStat {
        pid,
        ppid: num(1)? as i32,
        user_ticks: ticks(11)?.saturating_add(ticks(13)?),
        system_ticks: ticks(12)?.saturating_add(ticks(14)?),
    })
}

fn scan_proc() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(&text)
        })
        .collect()
}

/// The container's live processes: `roots` (pids), the agent's other
/// children, and their descendants.
pub fn container_processes(roots: &[i32]) -> Vec<ProcStat> {
    let all = scan_proc();
    let me = std::process::id() as i32;
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, p) in all.iter().enumerate() {
        children.entry(p.ppid).or_default().push(i);
    }
    let by_pid: HashMap<i32, usize> = all.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    let mut seen = HashSet::new();
    let mut queue: Vec<i32> = roots.to_vec();
    queue.extend(children.get(&me).into_iter().flatten().map(|&i| all[i].pid));
    let mut out = Vec::new();
    while let Some(pid) = queue.pop() {
        if pid == me || !seen.insert(pid) {
            continue;
        }
        if let Some(&i) = by_pid.get(&pid) {
            out.push(all[i]);
            queue.extend(
                children
                    .get(&pid)
                    .into_iter()
                    .flatten()
                    .map(|&c| all[c].pid),
            );
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// argv of a process from /proc/PID/cmdline.
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Memory of the guest from /proc/meminfo (and the cgroup v2 root when it
/// has `memory.current`).
pub fn memory() -> MemoryStats {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut stats = parse_meminfo(&text);
    stats.cgroup_current_bytes = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    stats
}

/// Parses /proc/meminfo text (values in kB).
pub fn parse_meminfo(text: &str) -> MemoryStats {
    let mut stats = MemoryStats::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(kb) = value.parse::<u64>() else {
            continue;
        };
        let bytes = kb.saturating_mul(1024);
        match key {
            "MemTotal:" => stats.total_bytes = bytes,
            "MemFree:" => stats.free_bytes = bytes,
            "MemAvailable:" => stats.available_bytes = bytes,
            _ => {}
        }
    }
    stats
}

/// CPU totals: live processes' ticks plus exited ones' ns.
pub fn cpu(live: &[ProcStat], exited_ns: (u64, u64)) -> CpuStats {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ns_per_tick = if hz > 0 {
        1_000_000_000 / hz as u64
    } else {
        10_000_000
    };
    let (mut user, mut system) = exited_ns;
    for p in live {
        user = user.saturating_add(p.user_ticks.saturating_mul(ns_per_tick));
        system = system.saturating_add(p.system_ticks.saturating_mul(ns_per_tick));
    }
    CpuStats {
        usage_ns: user.saturating_add(system),
        user_ns: user,
        system_ns: system,
    }
}

/// Maps pid → process id for `ps`.
pub fn id_by_pid(running: &[(ProcessId, i32)]) -> HashMap<i32, ProcessId> {
    running.iter().map(|&(id, pid)| (pid, id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_comm() {
        let text = "123 (a b) c) S 1 123 123 0 -1 4194560 100 0 0 0 5 6 7 8 20 0 1 0 1 2 3";
        let s = parse_stat(text).unwrap();
        assert_eq!(
            (s.pid, s.ppid, s.user_ticks, s.system_ticks),
            (123, 1, 12, 14)
        );
    }

    #[test]
    fn parses_meminfo() {
        let m = parse_meminfo("MemTotal: 100 kB\nMemFree: 50 kB\nMemAvailable: 70 kB\nbad\n");
        assert_eq!(
            (m.total_bytes, m.free_bytes, m.available_bytes),
            (102400, 51200, 71680)
        );
    }

    #[test]
    fn garbage_stat_is_none() {
        assert!(parse_stat("").is_none());
        assert!(parse_stat("1 (x) S").is_none());
    }
}
