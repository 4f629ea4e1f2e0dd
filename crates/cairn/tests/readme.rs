//! The README's command lines, run exactly as written against the demo its main command starts, on its
//! default ports (127.0.0.1:8080 and 127.0.0.1:50051 and, for a cluster, the ones after them; the test
//! waits out connections lingering in TIME_WAIT on them and fails clearly if something else holds them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn readme() -> String {
    // Cargo sets the manifest directory when it runs the test; the compile-time one may name another
    // checkout that shared the target directory (and so this binary).
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    std::fs::read_to_string(Path::new(&manifest).join("../../README.md")).unwrap()
}

/// The arguments of the README's main command (`cargo run --release -p cairn -- ARGS`).
fn main_command_args() -> Vec<String> {
    let readme = readme();
    let line = readme.lines().find(|l| l.starts_with("cargo run --release -p cairn -- ")).unwrap();
    let args = line.split(" #").next().unwrap().trim();
    args["cargo run --release -p cairn -- ".len()..].split_whitespace().map(String::from).collect()
}

/// The lines of the README's "In another terminal" block, comments stripped.
fn readme_lines() -> Vec<String> {
    let readme = readme();
    let start = readme.find("In another terminal:").expect("the README's demo block");
    let block = &readme[start..];
    let open = block.find("```sh\n").unwrap() + 6;
    let close = open + block[open..].find("```").unwrap();
    block[open..close]
        .lines()
        .map(|l| l.split(" #").next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// How many nodes the main command's demo runs (`--nodes N`, else 1).
fn demo_nodes(args: &[String]) -> u16 {
    args.iter().position(|a| a == "--nodes").and_then(|i| args.get(i + 1)).map_or(1, |n| n.parse().unwrap())
}

/// Waits until the demo's ports can be listened on. A test run just before this one (or any process
/// on the machine) may have left connections in TIME_WAIT whose local port is one of them: the kernel
/// hands out ephemeral ports from a range that includes 50051..50053 and keeps a closed client socket's
/// port for 60 s, refusing a listener meanwhile even with SO_REUSEADDR. Bounded: a port held longer
/// than TIME_WAIT lasts is reported as in use.
fn wait_for_free_ports(nodes: u16) {
    let ports: Vec<u16> = (0..nodes).flat_map(|i| [8080 + i, 50051 + i]).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // std's listeners set SO_REUSEADDR, as the server's do.
        let busy: Vec<u16> =
            ports.iter().copied().filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_err()).collect();
        if busy.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "the demo's ports {busy:?} on 127.0.0.1 stay in use");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn readme_lines_work_as_written() {
    let lines = readme_lines();
    assert!(lines.len() >= 8, "{lines:?}");
    let tmp = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_cairn"));
    let args = main_command_args();
    assert_eq!(args.first().map(String::as_str), Some("demo"), "{args:?}");
    wait_for_free_ports(demo_nodes(&args));
    let mut demo = Command::new(bin)
        .args(&args)
        .args(["--log-level", "warn"])
        .env("CAIRN_STORE", tmp.path().join("demo-data"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(demo.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    if !first.starts_with("cairn listening http=127.0.0.1:8080 grpc=127.0.0.1:50051") {
        let _ = demo.kill();
        panic!("cairn demo did not start on its default ports (are they in use?): {first:?}");
    }
    let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let mut outputs = Vec::new();
    for line in &lines {
        let out = Command::new("sh").args(["-c", line]).env("PATH", &path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{line}: {}{}", text, String::from_utf8_lossy(&out.stderr));
        outputs.push((line.clone(), text));
    }
    let said = |prefix: &str| {
        outputs.iter().find(|(l, _)| l.starts_with(prefix)).map(|(_, o)| o.clone()).unwrap_or_default()
    };
    assert!(said("curl -X POST").contains("\"timestamp\""));
    assert!(said("curl http://127.0.0.1:8081/kv/rest/entry/Cockroach").contains("SGVsbG8="));
    assert!(said("curl 'http://127.0.0.1:8080/kv/rest/range").contains("Q29ja3JvYWNo"));
    assert!(said("cairn kv put").starts_with("OK "));
    assert_eq!(said("cairn kv get"), "hello\n");
    assert_eq!(said("cairn kv scan"), "greeting\thello\n");
    assert!(said("cairn status").contains("shard  buckets"));
    assert!(Command::new("kill").args(["-INT", &demo.id().to_string()]).status().unwrap().success());
    assert!(demo.wait().unwrap().success());
}
