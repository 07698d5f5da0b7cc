//! Host resources and process matching through sysinfo.

use craftmesh_protocol::report::{HostResources, ProcessInfo};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

/// Keeps a small `System` for memory and CPU readings between snapshots.
#[derive(Debug)]
pub struct HostMonitor {
    sys: Option<System>,
    hostname: String,
}

impl Default for HostMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl HostMonitor {
    pub fn new() -> Self {
        HostMonitor { sys: System::new().ok(), hostname: System::host_name().unwrap_or_else(|_| "unknown".into()) }
    }

    /// Reads memory, load and CPU usage (usage is 0 on the first reading).
    pub fn snapshot(&mut self) -> HostResources {
        let cpu_count = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let load = System::load_average().map(|l| l.one).unwrap_or(0.0);
        let Some(sys) = self.sys.as_mut() else {
            return HostResources { hostname: self.hostname.clone(), cpu_count, load_average_1m: load, ..Default::default() };
        };
        sys.refresh_memory();
        sys.refresh_cpu_usage();
        HostResources {
            hostname: self.hostname.clone(),
            memory_total_bytes: sys.total_memory(),
            memory_available_bytes: sys.available_memory(),
            cpu_count,
            load_average_1m: load,
            cpu_usage_percent: sys.global_cpu_usage(),
        }
    }
}

/// Scans running processes once and returns, per pattern, the matching processes.
/// A pattern matches the process name or its full command line as a substring.
/// Our own process is skipped. Blocking: call from a blocking thread.
pub fn match_processes(patterns: &[String]) -> Vec<(String, ProcessInfo)> {
    let Ok(mut sys) = System::new() else { return Vec::new() };
    sys.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing().with_cmd(UpdateKind::Always).with_memory().with_cpu().without_tasks(),
    );
    let me = std::process::id();
    let mut out = Vec::new();
    for (pid, p) in sys.processes() {
        if pid.as_u32() == me || p.thread_kind().is_some() {
            continue;
        }
        let name = p.name().to_string_lossy();
        let cmd = p.cmd().iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
        for pat in patterns {
            if name.contains(pat.as_str()) || cmd.contains(pat.as_str()) {
                let run = p.run_time().max(1) as f32;
                let cpu = (p.accumulated_cpu_time() as f32 / 1000.0) / run * 100.0;
                out.push((
                    pat.clone(),
                    ProcessInfo { pid: pid.as_u32(), name: name.to_string(), memory_bytes: p.memory(), cpu_percent: (cpu * 10.0).round() / 10.0 },
                ));
            }
        }
    }
    out.sort_by_key(|(_, p)| p.pid);
    out
}

/// Whether a process with this pid is alive.
pub fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether the machine has a battery (`/sys/class/power_supply/*/type` is `Battery`):
/// a laptop, which sleeps, so by default it does not vote in the claims cluster.
pub fn has_battery() -> bool {
    has_battery_in(std::path::Path::new("/sys/class/power_supply"))
}

/// [`has_battery`] under another root (tests).
pub fn has_battery_in(root: &std::path::Path) -> bool {
    let Ok(dir) = std::fs::read_dir(root) else { return false };
    dir.filter_map(|e| e.ok()).take(64).any(|e| std::fs::read_to_string(e.path().join("type")).is_ok_and(|t| t.trim() == "Battery"))
}

#[cfg(test)]
mod battery_tests {
    #[test]
    fn a_power_supply_of_type_battery_is_a_battery() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!super::has_battery_in(dir.path()));
        std::fs::create_dir(dir.path().join("AC")).expect("mkdir");
        std::fs::write(dir.path().join("AC/type"), "Mains\n").expect("write");
        assert!(!super::has_battery_in(dir.path()), "mains power is not a battery");
        std::fs::create_dir(dir.path().join("BAT0")).expect("mkdir");
        std::fs::write(dir.path().join("BAT0/type"), "Battery\n").expect("write");
        assert!(super::has_battery_in(dir.path()));
    }
}
