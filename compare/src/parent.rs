//! The parent process: starts one child per engine per run (so each engine has its own peak RSS and
//! caches), collects their JSON lines, and prints every result, a summary across runs and the
//! cairn / other ratio table.

use crate::cli::{Args, Workload};
use crate::engines::{Kind, Result};
use crate::protocol::{Facts, Measurement, Message};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const MIB: f64 = 1024.0 * 1024.0;

/// What one child reported.
struct EngineRun {
    run: u32,
    kind: Kind,
    measurements: Vec<Measurement>,
    facts: Option<Facts>,
    /// Why the child failed, if it did (its results so far are kept).
    error: Option<String>,
}

impl EngineRun {
    fn ops_per_sec(&self, workload: Workload) -> Option<f64> {
        self.measurements.iter().find(|m| m.workload == workload.name()).map(|m| m.ops_per_sec)
    }

    fn size(&self) -> Option<f64> {
        self.facts.as_ref()?.size_after_compaction_bytes.map(|b| b as f64)
    }

    fn rss(&self) -> Option<f64> {
        self.facts.as_ref().map(|f| f.peak_rss_bytes as f64).filter(|&b| b > 0.0)
    }
}

/// Runs every engine `--runs` times and prints the results.
pub fn run(args: &Args) -> Result<()> {
    args.validate()?;
    let (root, temp) = cairn_bench::run::work_root(args.dir.as_deref(), "cairn-compare-")?;
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    if !args.json {
        println!(
            "cairn-compare: num={} key={}B value={}B sync-num={} runs={} engines={} workloads={}",
            args.num,
            args.key_size,
            args.value_size,
            args.sync_num,
            args.runs,
            join(args.engines.iter().map(|k| k.name())),
            join(args.workloads.iter().map(|w| w.name())),
        );
        println!("databases under {}", root.display());
    }
    let mut results = Vec::new();
    for run in 1..=args.runs {
        for &kind in &args.engines {
            let dir = root.join(format!("run{run}-{}", kind.name()));
            eprintln!("cairn-compare: run {run}/{}: {} ...", args.runs, kind.name());
            let result = run_child(&exe, args, run, kind, &dir);
            print_engine_run(args, &result);
            results.push(result);
        }
    }
    if args.json {
        print_ratios_json(args, &results);
    } else {
        print_summary(args, &results);
        print_ratios(args, &results);
        print_notes(args);
    }
    drop(temp);
    let failed: Vec<String> =
        results.iter().filter(|r| r.error.is_some()).map(|r| format!("{} (run {})", r.kind, r.run)).collect();
    if failed.is_empty() { Ok(()) } else { Err(format!("failed: {}", failed.join(", "))) }
}

/// Starts the child for `kind`, reads its JSON lines as they come (anything else it prints on stdout is
/// passed on to stderr), and waits for it.
fn run_child(exe: &Path, args: &Args, run: u32, kind: Kind, dir: &Path) -> EngineRun {
    let mut out = EngineRun { run, kind, measurements: Vec::new(), facts: None, error: None };
    let spawned = Command::new(exe)
        .args(args.child_args(kind, dir))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(format!("starting the child: {e}"));
            return out;
        }
    };
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Message>(&line) {
                Ok(Message::Workload(m)) => out.measurements.push(m),
                Ok(Message::Facts(f)) => out.facts = Some(f),
                Err(_) => eprintln!("[{kind}] {line}"),
            }
        }
    }
    match child.wait() {
        Ok(status) if status.success() => {}
        Ok(status) => out.error = Some(format!("child exited with {status}")),
        Err(e) => out.error = Some(format!("waiting for the child: {e}")),
    }
    // The child removes its databases; this catches what a failed one left behind.
    let _ = std::fs::remove_dir_all(dir);
    out
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(",")
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / MIB)
}

/// Prints rows with every column as wide as its widest cell (first column left-aligned).
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> =
            row.iter()
                .enumerate()
                .map(|(c, s)| {
                    if c == 0 { format!("{s:<w$}", w = widths[c]) } else { format!("{s:>w$}", w = widths[c]) }
                })
                .collect();
        println!("  {}", cells.join("  ").trim_end());
    }
}

fn print_engine_run(args: &Args, r: &EngineRun) {
    if args.json {
        for m in &r.measurements {
            let mut v = json!(m);
            v["type"] = json!("workload");
            v["run"] = json!(r.run);
            v["engine"] = json!(r.kind.name());
            println!("{v}");
        }
        if let Some(f) = &r.facts {
            let mut v = json!(f);
            v["type"] = json!("facts");
            v["run"] = json!(r.run);
            v["engine"] = json!(r.kind.name());
            println!("{v}");
        }
        if let Some(e) = &r.error {
            println!("{}", json!({"type": "error", "run": r.run, "engine": r.kind.name(), "error": e}));
        }
        return;
    }
    println!();
    println!("run {}/{}: {}", r.run, args.runs, r.kind);
    let mut rows = vec![
        ["workload", "ops", "secs", "ops/s", "p50 µs", "p99 µs", "p99.9 µs", "wrong"]
            .map(String::from)
            .to_vec(),
    ];
    for m in &r.measurements {
        let latency =
            |us: f64| if m.workload == Workload::ReadSeq.name() { "-".into() } else { format!("{us:.1}") };
        rows.push(vec![
            m.workload.clone(),
            m.ops.to_string(),
            format!("{:.2}", m.secs),
            format!("{:.0}", m.ops_per_sec),
            latency(m.p50_us),
            latency(m.p99_us),
            latency(m.p999_us),
            m.wrong.to_string(),
        ]);
    }
    print_table(&rows);
    if let Some(f) = &r.facts {
        let size = match (f.size_after_compaction_bytes, f.apparent_size_bytes, &f.size_measured_after) {
            (Some(b), Some(apparent), Some(after)) => {
                format!(
                    "{} on disk, {} apparent (database from {after})",
                    mib(b as f64),
                    mib(apparent as f64)
                )
            }
            (Some(b), _, _) => mib(b as f64),
            _ => "not measured (no workload wrote every key)".into(),
        };
        println!("  size after full compaction: {size}   peak RSS: {}", mib(f.peak_rss_bytes as f64));
    }
    if let Some(e) = &r.error {
        println!("  FAILED: {e}");
    }
}

/// The runs of `kind`, in run order.
fn runs_of(results: &[EngineRun], kind: Kind) -> Vec<&EngineRun> {
    results.iter().filter(|r| r.kind == kind).collect()
}

/// Cells of every run joined by " / ", or "-" where a run has no value.
fn per_run(runs: &[&EngineRun], value: impl Fn(&EngineRun) -> Option<String>) -> String {
    let cells: Vec<String> = runs.iter().map(|r| value(r).unwrap_or_else(|| "-".into())).collect();
    if cells.iter().all(|c| c == "-") { "-".into() } else { cells.join(" / ") }
}

/// A fact of an engine run (bytes), if it was measured.
type Fact = fn(&EngineRun) -> Option<f64>;

/// Throughput, size and RSS of every engine side by side, every run in one cell.
fn print_summary(args: &Args, results: &[EngineRun]) {
    println!();
    println!(
        "Summary ({}): ops/s (readseq: rows/s), on-disk size after full compaction, peak RSS",
        if args.runs > 1 { "run 1 / run 2 / ..." } else { "one run" }
    );
    let mut rows =
        vec![std::iter::once("".to_string()).chain(args.engines.iter().map(|k| k.to_string())).collect()];
    for &w in &args.workloads {
        let mut row = vec![w.to_string()];
        for &kind in &args.engines {
            row.push(per_run(&runs_of(results, kind), |r| r.ops_per_sec(w).map(|v| format!("{v:.0}"))));
        }
        rows.push(row);
    }
    let facts: [(&str, Fact); 2] = [("disk size MiB", EngineRun::size), ("peak RSS MiB", EngineRun::rss)];
    for (name, get) in facts {
        let mut row = vec![name.to_string()];
        for &kind in &args.engines {
            row.push(per_run(&runs_of(results, kind), |r| get(r).map(|b| format!("{:.1}", b / MIB))));
        }
        rows.push(row);
    }
    print_table(&rows);
}

/// One ratio per run of `other` against cairn's run of the same number; `cairn_over` picks the
/// direction (ops/s: cairn / other; size and RSS: other / cairn), so >1 always means cairn is better.
fn ratios(
    results: &[EngineRun],
    other: Kind,
    value: impl Fn(&EngineRun) -> Option<f64>,
    cairn_over: bool,
) -> Vec<(u32, Option<f64>)> {
    runs_of(results, other)
        .into_iter()
        .map(|o| {
            let cairn = results.iter().find(|r| r.kind == Kind::Cairn && r.run == o.run);
            let ratio = match (cairn.and_then(&value), value(o)) {
                (Some(c), Some(x)) if c > 0.0 && x > 0.0 => Some(if cairn_over { c / x } else { x / c }),
                _ => None,
            };
            (o.run, ratio)
        })
        .collect()
}

type Value = Box<dyn Fn(&EngineRun) -> Option<f64>>;
type Metric = (String, Value, bool);

/// The rows of the ratio table: every workload's ops/s, then size and peak RSS.
fn metrics(args: &Args) -> Vec<Metric> {
    let mut out: Vec<Metric> = args
        .workloads
        .iter()
        .map(|&w| (w.to_string(), Box::new(move |r: &EngineRun| r.ops_per_sec(w)) as Value, true))
        .collect();
    out.push(("disk size".into(), Box::new(EngineRun::size), false));
    out.push(("peak RSS".into(), Box::new(EngineRun::rss), false));
    out
}

fn print_ratios(args: &Args, results: &[EngineRun]) {
    let others: Vec<Kind> = args.engines.iter().copied().filter(|&k| k != Kind::Cairn).collect();
    if !args.engines.contains(&Kind::Cairn) || others.is_empty() {
        println!();
        println!("(no ratio table: it needs cairn and at least one other engine)");
        return;
    }
    println!();
    println!("cairn vs others, one ratio per run; > 1 means cairn is better:");
    println!("  workloads: cairn ops/s / other ops/s;  disk size and peak RSS: other / cairn");
    let mut rows =
        vec![std::iter::once("".to_string()).chain(others.iter().map(|k| k.to_string())).collect()];
    for (name, value, cairn_over) in metrics(args) {
        let mut row = vec![name];
        for &other in &others {
            let cells: Vec<String> = ratios(results, other, &value, cairn_over)
                .into_iter()
                .map(|(_, r)| r.map_or_else(|| "-".into(), |r| format!("{r:.2}")))
                .collect();
            row.push(cells.join(" / "));
        }
        rows.push(row);
    }
    print_table(&rows);
}

fn print_ratios_json(args: &Args, results: &[EngineRun]) {
    if !args.engines.contains(&Kind::Cairn) {
        return;
    }
    for other in args.engines.iter().copied().filter(|&k| k != Kind::Cairn) {
        for (name, value, cairn_over) in metrics(args) {
            for (run, ratio) in ratios(results, other, &value, cairn_over) {
                let direction = if cairn_over { "cairn_over_other" } else { "other_over_cairn" };
                println!(
                    "{}",
                    json!({"type": "ratio", "run": run, "engine": other.name(), "metric": name,
                           "direction": direction, "ratio": ratio})
                );
            }
        }
    }
}

fn print_notes(args: &Args) {
    println!();
    println!("Engine configurations:");
    for &kind in &args.engines {
        for (i, note) in kind.notes().iter().enumerate() {
            let name = if i == 0 { kind.name() } else { "" };
            println!("  {name:<14} {note}");
        }
    }
    println!(
        "  all: one child process per engine per run; {}-byte keys, {}-byte values from cairn-bench; \
         fillrandom/readrandom/readseq single-threaded",
        args.key_size, args.value_size
    );
}
