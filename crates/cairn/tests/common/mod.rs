//! What the binary's end-to-end tests share: starting `cairn` as a child process and a minimal HTTP
//! client (one request per connection), so the tests check the server's bytes independently.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `cairn start`; killed if the test fails before stopping it.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub grpc: SocketAddr,
}

impl Server {
    /// `cairn start --store STORE EXTRA...` on ephemeral ports.
    pub fn start(store: &Path, extra: &[&str]) -> Server {
        let mut args = vec!["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Server::start_with(store, &args)
    }

    /// `cairn start --store STORE ARGS...` (listen addresses among `args`).
    pub fn start_with(store: &Path, args: &[&str]) -> Server {
        Server::start_env(store, args, &[])
    }

    /// [`Server::start_with`] with `env` added to the process's environment (credentials).
    pub fn start_env(store: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        // CAIRN_TEST_LOG (e.g. `info,cairn_cluster=debug`) says more when a test is being chased.
        let level = std::env::var("CAIRN_TEST_LOG").unwrap_or_else(|_| "warn".to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .envs(env.iter().copied())
            .args(["start", "--log-level", &level])
            .arg("--store")
            .arg(store)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let rest =
            line.trim().strip_prefix("cairn listening http=").unwrap_or_else(|| panic!("said {line:?}"));
        let (http, grpc) = rest.split_once(" grpc=").unwrap_or_else(|| panic!("said {line:?}"));
        Server { addr: http.parse().unwrap(), grpc: grpc.parse().unwrap(), child }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "cairn exited with {status}");
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn call(&self, method: &str, target: &str, body: &[u8]) -> Response {
        http(self.addr, method, target, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap().to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`, so the body ends at EOF).
pub fn http(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Response {
    try_http(addr, method, target, body).unwrap_or_else(|e| panic!("{method} {target} at {addr}: {e}"))
}

/// [`http`], reporting a connection that fails or ends early instead of panicking.
pub fn try_http(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> std::io::Result<Response> {
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    raw_http(addr, &request)
}

/// Sends `request` verbatim on a fresh connection and reads the response until the server closes it.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(std::io::Error::other("the connection closed before a response"));
    };
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(": ")).map(|(n, v)| (n.to_string(), v.to_string())).collect();
    Ok(Response { status, headers, body: raw[split + 4..].to_vec() })
}

/// Polls `done` every 50 ms until it holds; fails the test after `deadline`.
pub fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the `cairn` binary with `args`; returns its exit success, stdout and stderr.
pub fn cairn(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// How long a cluster may take to come up or to settle.
pub const READY: Duration = Duration::from_secs(60);

/// True once the node at `server` serves keys over HTTP.
pub fn serves_keys(server: &Server) -> bool {
    // Until its shards are up a member answers no HTTP; the connection waits in the listen backlog.
    let probe = std::thread::scope(|s| {
        let h = s.spawn(|| try_http(server.addr, "GET", "/health?ready=1", b""));
        let start = std::time::Instant::now();
        while !h.is_finished() && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        h.is_finished().then(|| h.join().unwrap())
    });
    matches!(probe, Some(Ok(r)) if r.status == 200)
}

/// Three nodes started with `--join`, a cluster made by `cairn init` on the first (3 replicas, 4 shards,
/// nodes dead after 2 s unheard), every node serving keys.
pub fn three_nodes(store: &dyn Fn(usize) -> std::path::PathBuf) -> [Server; 3] {
    three_nodes_with(store, 4)
}

/// [`three_nodes`] with `shards` shards.
pub fn three_nodes_with(store: &dyn Fn(usize) -> std::path::PathBuf, shards: u32) -> [Server; 3] {
    three_nodes_args(store, shards, &[])
}

/// [`three_nodes_with`], each node started with `extra` flags too.
pub fn three_nodes_args(
    store: &dyn Fn(usize) -> std::path::PathBuf,
    shards: u32,
    extra: &[&str],
) -> [Server; 3] {
    three_nodes_env(store, shards, extra, &[])
}

/// [`three_nodes_args`], each node's process with `env` added to its environment.
pub fn three_nodes_env(
    store: &dyn Fn(usize) -> std::path::PathBuf,
    shards: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> [Server; 3] {
    let start = |i: usize, join: &str| {
        let args = [&["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--join", join][..], extra]
            .concat();
        Server::start_env(&store(i), &args, env)
    };
    let n1 = start(1, "");
    let n1_grpc = n1.grpc.to_string();
    let shards = shards.to_string();
    let init = ["init", "--addr", &n1_grpc, "--replication-factor", "3", "--shards", &shards];
    let (ok, _, err) = cairn(&[&init[..], &["--dead-after-secs", "2"]].concat());
    assert!(ok, "init failed: {err}");
    // One at a time, so that `nN` is node N (ids are handed out in the order joins are admitted).
    let n2 = start(2, &n1_grpc);
    wait_until("node 2 is admitted", READY, || node_id(&n2) == 2);
    let n3 = start(3, &n1_grpc);
    for n in [&n1, &n2, &n3] {
        wait_until("every node serves keys", READY, || serves_keys(n));
    }
    [n1, n2, n3]
}

/// The node id `server` was admitted as (0 until it is).
pub fn node_id(server: &Server) -> u64 {
    use cairn_proto::cluster::{StateRequest, cluster_client::ClusterClient};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = ClusterClient::connect(format!("http://{}", server.grpc)).await.ok()?;
        let r = c.state(StateRequest { linearizable: false, forwarded: false }).await.ok()?;
        Some(r.into_inner().node_id)
    })
    .unwrap_or(0)
}

/// A key in each shard, from the cluster's map: (shard id, key).
pub fn key_per_shard(n: &Server) -> Vec<(u64, String)> {
    let (ok, out, err) = cairn(&["status", "--json", "--addr", &n.grpc.to_string()]);
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    let shards: Vec<(u64, u64, u64)> = status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let first = &s["ranges"][0];
            (s["id"].as_u64().unwrap(), first[0].as_u64().unwrap(), first[1].as_u64().unwrap())
        })
        .collect();
    let total = shards.iter().map(|s| s.2).max().unwrap() as u32 + 1;
    shards
        .iter()
        .map(|&(id, first, last)| {
            let key = (0..)
                .map(|i| format!("probe-{i}"))
                .find(|k| (first..=last).contains(&u64::from(cairn_proto::bucket_of(k.as_bytes(), total))))
                .unwrap();
            (id, key)
        })
        .collect()
}

/// The shards' ranges (`GET /admin/shards` through `server`), and whether a split or merge is under
/// way.
/// The meta group can be between leaders (under load, while groups split and merge): a 503 is asked
/// again, for up to 30 s.
pub fn shard_ranges(server: &Server) -> (Vec<Value>, bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let reply = server.call("GET", "/admin/shards", b"");
        if reply.status == 200 {
            break reply.json();
        }
        assert!(
            reply.status == 503 && std::time::Instant::now() < deadline,
            "GET /admin/shards answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let list = listed["shards"].as_array().unwrap().clone();
    let busy = list.iter().any(|s| !s["splitting"].is_null() || !s["merging"].is_null());
    (list.iter().map(|s| s["ranges"].clone()).collect(), busy)
}

/// Sets cluster setting `name` to `value` with `cairn settings set` through `server`.
pub fn set_setting(server: &Server, name: &str, value: &str) {
    let (ok, out, err) = cairn(&["settings", "set", name, value, "--addr", &server.grpc.to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("split_size_bytes"), "{out}");
}

/// A real S3-compatible server (moto, through `scripts/s3-test-server`) on 127.0.0.1 with one bucket;
/// stops when dropped (its stdin closes).
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

/// Credentials the test server takes, as a node's environment carries them.
pub const S3_ENV: [(&str, &str); 2] =
    [("AWS_ACCESS_KEY_ID", "cairn-test"), ("AWS_SECRET_ACCESS_KEY", "cairn-test")];

impl S3Server {
    /// Starts it (installing moto into a cache directory on first use, which can take minutes).
    pub fn start(bucket: &str) -> S3Server {
        let manifest =
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
        let script = Path::new(&manifest).join("../../scripts/s3-test-server");
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(&script)
            .arg(bucket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(300)).unwrap_or_default();
        let Some(endpoint) = line.trim().strip_prefix("READY ") else {
            let _ = child.kill();
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            panic!("scripts/s3-test-server did not start (said {line:?}); its log:\n{text}");
        };
        S3Server { endpoint: endpoint.to_string(), child }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
