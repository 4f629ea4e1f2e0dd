//! Result lines (an aligned table or JSON lines) and process/disk measurements.

use crate::histogram::Histogram;
use std::path::Path;

const MIB: f64 = 1024.0 * 1024.0;

/// The outcome of one workload.
#[derive(Debug)]
pub struct WorkloadResult {
    pub name: String,
    pub ops: u64,
    pub secs: f64,
    /// Key + value bytes moved, for MB/s.
    pub bytes: u64,
    pub latency: Histogram,
    /// Extra `key: value` facts (write amplification, hit ratio, writer ops...), printed after the row.
    pub extra: Vec<(&'static str, f64)>,
}

impl WorkloadResult {
    fn ops_per_sec(&self) -> f64 {
        if self.secs > 0.0 { self.ops as f64 / self.secs } else { 0.0 }
    }

    fn mb_per_sec(&self) -> f64 {
        if self.secs > 0.0 { self.bytes as f64 / MIB / self.secs } else { 0.0 }
    }

    fn micros(&self, q: f64) -> f64 {
        self.latency.quantile(q) as f64 / 1000.0
    }
}

/// Prints results as they come, in the chosen format.
#[derive(Debug)]
pub struct Printer {
    json: bool,
}

impl Printer {
    pub fn new(json: bool) -> Printer {
        Printer { json }
    }

    pub fn header(&self) {
        if !self.json {
            println!(
                "{:<18} {:>10} {:>8} {:>12} {:>9} {:>9} {:>9} {:>9}",
                "workload", "ops", "secs", "ops/s", "MB/s", "p50 µs", "p99 µs", "p99.9 µs"
            );
        }
    }

    pub fn workload(&self, r: &WorkloadResult) {
        if self.json {
            let mut line = format!(
                "{{\"workload\":\"{}\",\"ops\":{},\"secs\":{:.3},\"ops_per_sec\":{:.1},\"mb_per_sec\":{:.2},\
                 \"p50_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2}",
                r.name,
                r.ops,
                r.secs,
                r.ops_per_sec(),
                r.mb_per_sec(),
                r.micros(0.5),
                r.micros(0.99),
                r.micros(0.999)
            );
            for (k, v) in &r.extra {
                line.push_str(&format!(",\"{k}\":{}", json_number(*v)));
            }
            line.push('}');
            println!("{line}");
        } else {
            println!(
                "{:<18} {:>10} {:>8.2} {:>12.0} {:>9.2} {:>9.1} {:>9.1} {:>9.1}",
                r.name,
                r.ops,
                r.secs,
                r.ops_per_sec(),
                r.mb_per_sec(),
                r.micros(0.5),
                r.micros(0.99),
                r.micros(0.999)
            );
            if !r.extra.is_empty() {
                let facts: Vec<String> = r.extra.iter().map(|(k, v)| format!("{k}={}", human(*v))).collect();
                println!("{:<18} {}", "", facts.join("  "));
            }
        }
    }

    /// A named group of facts (the end-of-run summary).
    pub fn facts(&self, name: &str, facts: &[(&'static str, f64)]) {
        if self.json {
            let body: Vec<String> =
                facts.iter().map(|(k, v)| format!("\"{k}\":{}", json_number(*v))).collect();
            println!("{{\"summary\":\"{name}\",{}}}", body.join(","));
        } else {
            println!("{name}:");
            for (k, v) in facts {
                println!("  {k:<24} {}", human(*v));
            }
        }
    }
}

fn json_number(v: f64) -> String {
    if !v.is_finite() {
        "null".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.4}")
    }
}

fn human(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v:.3}") }
}

/// Peak resident set size in bytes (`VmHWM`), or 0 where /proc is unavailable.
pub fn peak_rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Total size of the regular files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
