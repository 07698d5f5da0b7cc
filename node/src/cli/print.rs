//! Human output of reports and service lists.

use crate::api;
use craftmesh_protocol::report::{Finding, Report};

pub(super) fn print_report(r: &Report) {
    let gb = |b: u64| b as f64 / 1e9;
    println!(
        "host {}: {} CPUs, load {:.2}, memory {:.1}/{:.1} GB available",
        r.host.hostname,
        r.host.cpu_count,
        r.host.load_average_1m,
        gb(r.host.memory_available_bytes),
        gb(r.host.memory_total_bytes)
    );
    for s in &r.servers {
        let aliases = if s.aliases.is_empty() { String::new() } else { format!(" (also {})", s.aliases.join(", ")) };
        let state = match &s.resolved {
            Some(u) => format!("→ {u}"),
            None => "not found".to_string(),
        };
        println!("\n{}{aliases}: {state}{}", s.name, if s.enabled { "" } else { " [disabled]" });
        for f in &s.findings {
            println!("  {}", finding_line(f));
        }
        for n in &s.notes {
            println!("  note: {n}");
        }
    }
    println!("\n{} probes in {:.0} ms", r.probes, r.elapsed_ms);
}

pub(super) fn print_services(list: &[api::ServiceView]) {
    if list.is_empty() {
        println!("no services found");
        return;
    }
    for v in list {
        let place = if v.local {
            "local".to_string()
        } else if v.node_name.is_empty() {
            "lan".to_string()
        } else {
            v.node_name.clone()
        };
        println!("{:<16} {:<12} {}", v.finding.name, place, finding_line(&v.finding));
    }
}

fn finding_line(f: &Finding) -> String {
    let status = serde_json::to_value(f.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let proto = f.protocol.map(|p| format!("{p:?}").to_lowercase()).unwrap_or_else(|| "-".into());
    let mut s = format!("{:<11} {:<4} {:<32} via {}", status, proto, f.url.as_deref().unwrap_or("-"), f.source.as_str());
    let e = &f.evidence;
    let mut ev = Vec::new();
    if let Some(p) = e.port {
        ev.push(format!("port {p}"));
    }
    if let Some(p) = e.pid {
        ev.push(format!("pid {p}"));
    }
    if let Some(c) = &e.container_id {
        ev.push(format!("container {c}"));
    }
    if let Some(v) = &e.env_var {
        ev.push(format!("${v}"));
    }
    if let Some(l) = &e.lock_path {
        ev.push(format!("lock {l}"));
    }
    if let Some(p) = &e.path {
        ev.push(p.clone());
    }
    if !ev.is_empty() {
        s.push_str(&format!(" [{}]", ev.join(", ")));
    }
    if let Some(i) = &f.server_info {
        s.push_str(&format!(" {} {} (MCP {})", i.name, i.version, i.protocol_version));
    }
    if let Some(t) = &f.tools {
        s.push_str(&format!(", {} tools #{}", t.count, t.hash));
    }
    if let Some(p) = &f.process {
        s.push_str(&format!(" {} {:.0} MB {:.1}% CPU", p.name, p.memory_bytes as f64 / 1e6, p.cpu_percent));
    }
    if let Some(l) = f.latency_ms {
        s.push_str(&format!(" {l:.1} ms"));
    }
    if let Some(d) = &f.detail {
        s.push_str(&format!(" — {d}"));
    }
    s
}
