//! Hostile and malformed input against the real binary, table-driven: every case is a request and
//! the status and JSON error code it must get. REST, gRPC and the CLI; timestamps from the far future
//! (refused, and the clock stays where it was); HTTP clients that trickle their headers, sit idle or
//! hold every connection; and values large enough that one response could not hold them all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_proto::kv::{
    BatchOp, BatchRequest, GetRequest, PutRequest, ScanRequest, Timestamp, batch_op, kv_client::KvClient,
};
use common::{READY, Server, cairn, raw_http, serves_keys, wait_until};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

/// Nanoseconds since the epoch, as the nodes' clocks count.
fn now_ns() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Ten years from now, in nanoseconds.
fn far_future() -> u64 {
    now_ns() + 10 * 365 * 24 * 3600 * 1_000_000_000
}

/// The code a call answered with (`Ok` for success); a refusal always says why.
fn code<T>(answer: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    match answer {
        Ok(_) => tonic::Code::Ok,
        Err(s) => {
            assert!(!s.message().is_empty(), "{s:?}");
            s.code()
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A write's timestamp (wall time, ns) as the REST answer reports it.
fn written_at(s: &Server, key: &str) -> u64 {
    let r = s.call("PUT", &format!("/kv/rest/entry/{key}"), b"v");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["header"]["timestamp"]["wall_time"].as_u64().unwrap()
}

#[test]
fn rest_refuses_hostile_requests_with_a_status_and_a_json_code() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("store"), &["--max-value-bytes", "4096"]);
    assert_eq!(s.call("PUT", "/kv/rest/entry/a", b"x").status, 200);
    let far = far_future();
    let max_key = "k".repeat(16 << 10);
    let over_key = "k".repeat((16 << 10) + 1);
    let big_value = vec![b'v'; 4097];

    let cases: Vec<(&str, String, &[u8], u16, &str)> = vec![
        // Parameters: unknown, repeated, nameless, or not meant for the method.
        ("GET", "/kv/rest/entry/a?bogus=1".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/entry/a?=".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/entry/a?=1".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/entry/a?timestamp=1&timestamp=2".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/entry/a?consistency=bogus".into(), b"", 400, "invalid_argument"),
        ("PUT", "/kv/rest/entry/a?consistency=strong".into(), b"x", 400, "invalid_argument"),
        ("PUT", "/kv/rest/entry/a?if_absent=true&if_absent=true".into(), b"x", 400, "invalid_argument"),
        ("PUT", "/kv/rest/entry/a?if_absent=yes".into(), b"x", 400, "invalid_argument"),
        ("DELETE", "/kv/rest/entry/a?if_absent=true".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/entry/a?after=,".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/range?limit=0".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/entry/a?after=1:".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/entry/a?after=0:%2B1".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/range?limit=-1".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/range?limit=%2B5".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/range?limit=10001".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/range?limit=99999999999999999999999".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/range?start=b&end=a".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/range?start=a&start=b".into(), b"", 400, "invalid_argument"),
        ("GET", "/health?ready=1&ready=1".into(), b"", 400, "invalid_argument"),
        ("GET", "/_status?verbose=1".into(), b"", 400, "invalid_argument"),
        // Escapes: exactly two hex digits, no sign, no truncation.
        ("PUT", "/kv/rest/entry/%+1".into(), b"x", 400, "invalid_argument"),
        ("PUT", "/kv/rest/entry/%+F".into(), b"x", 400, "invalid_argument"),
        ("PUT", "/kv/rest/entry/%zz".into(), b"x", 400, "invalid_argument"),
        ("PUT", "/kv/rest/entry/a%2".into(), b"x", 400, "invalid_argument"),
        ("GET", "/kv/rest/range?start=%G0".into(), b"", 400, "invalid_argument"),
        // Empty keys are no keys.
        ("PUT", "/kv/rest/entry/".into(), b"x", 400, "invalid_argument"),
        ("GET", "/kv/rest/entry/".into(), b"", 400, "invalid_argument"),
        ("DELETE", "/kv/rest/entry/".into(), b"", 400, "invalid_argument"),
        // Sizes: the key limit is what the docs and the message say; values likewise.
        ("PUT", format!("/kv/rest/entry/{max_key}"), b"x", 200, ""),
        ("GET", format!("/kv/rest/entry/{max_key}"), b"", 200, ""),
        ("PUT", format!("/kv/rest/entry/{over_key}"), b"x", 413, "too_large"),
        // Reads take any key a store may hold (one written under a larger limit): absent, not refused.
        ("GET", format!("/kv/rest/entry/{over_key}"), b"", 404, "not_found"),
        ("DELETE", format!("/kv/rest/entry/{over_key}"), b"", 404, "not_found"),
        ("GET", format!("/kv/rest/entry/{}", "k".repeat(32_001)), b"", 413, "too_large"),
        ("PUT", "/kv/rest/entry/big".into(), &big_value, 413, "too_large"),
        // Far-future and out-of-range timestamps: refused, never observed.
        ("GET", format!("/kv/rest/entry/a?timestamp={far}"), b"", 400, "out_of_range"),
        ("GET", format!("/kv/rest/range?timestamp={far}"), b"", 400, "out_of_range"),
        ("PUT", format!("/kv/rest/entry/a?if_timestamp={far}"), b"x", 400, "out_of_range"),
        ("POST", format!("/kv/rest/entry/a?if_timestamp={far}.7"), b"x", 400, "out_of_range"),
        (
            "GET",
            "/kv/rest/entry/a?timestamp=18446744073709551615.4294967295".into(),
            b"",
            400,
            "invalid_argument",
        ),
        ("GET", "/kv/rest/entry/a?timestamp=9223372036854775808".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/entry/a?timestamp=%2B5".into(), b"", 400, "invalid_argument"),
        ("GET", "/kv/rest/entry/a?timestamp=1.".into(), b"", 400, "invalid_argument"),
        // Routes and methods: JSON on every error.
        ("PATCH", "/kv/rest/entry/a".into(), b"", 405, "method_not_allowed"),
        ("POST", "/kv/rest/range".into(), b"", 405, "method_not_allowed"),
        ("DELETE", "/_status".into(), b"", 405, "method_not_allowed"),
        ("GET", "/no/such/route".into(), b"", 404, "not_found"),
    ];
    for (method, target, body, status, code) in &cases {
        let r = s.call(method, target, body);
        let shown = if target.len() > 80 { &target[..80] } else { target };
        assert_eq!(r.status, *status, "{method} {shown}: {}", String::from_utf8_lossy(&r.body));
        if !code.is_empty() {
            assert_eq!(r.code(), *code, "{method} {shown}");
            assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {shown}");
            assert_eq!(r.header("content-type"), Some("application/json"), "{method} {shown}");
        }
    }
    // HEAD gets the status without a body.
    assert_eq!(s.call("HEAD", &format!("/kv/rest/entry/a?timestamp={far}"), b"").status, 400);

    // A body that is not valid chunked encoding is the client's fault: 400, not 413.
    let bad_chunks = format!(
        "PUT /kv/rest/entry/c HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        s.addr
    );
    let r = raw_http(s.addr, bad_chunks.as_bytes()).unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "invalid_argument");
    assert_eq!(s.call("GET", "/kv/rest/entry/c", b"").status, 404);

    // After all that the clock is where it was: writes are stamped now, and in order.
    let before = now_ns();
    let first = written_at(&s, "after-1");
    let second = written_at(&s, "after-2");
    assert!(
        first >= before - 1_000_000_000 && first < before + 5_000_000_000,
        "stamped {first}, now {before}"
    );
    assert!(second >= first);
    let r = s.call("GET", "/kv/rest/range?start=after-&end=after-~", b"").json();
    assert_eq!(r["rows"].as_array().unwrap().len(), 2, "{r}");
    s.stop();
}

#[test]
fn grpc_and_cli_refuse_hostile_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("store"), &[]);
    // gRPC answers "not serving keys yet" (UNAVAILABLE) until the node's shards are up; HTTP waits.
    wait_until("the node serves keys", READY, || serves_keys(&s));
    let grpc = s.grpc.to_string();
    let far = Timestamp { wall_time: far_future(), logical: 0 };
    runtime().block_on(async {
        let mut c = KvClient::connect(format!("http://{grpc}")).await.unwrap();
        c.put(PutRequest { key: b"a".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
        use tonic::Code::{InvalidArgument, OutOfRange, ResourceExhausted};
        let empty_put = PutRequest { key: Vec::new(), value: b"v".to_vec(), ..Default::default() };
        assert_eq!(code(c.put(empty_put).await), InvalidArgument);
        let empty_op = BatchOp { key: Vec::new(), op: Some(batch_op::Op::Put(b"v".to_vec())) };
        let batch = BatchRequest { ops: vec![empty_op], route: None };
        assert_eq!(code(c.batch(batch).await), InvalidArgument);
        let empty_get = GetRequest { key: Vec::new(), ..Default::default() };
        assert_eq!(code(c.get(empty_get).await), InvalidArgument);
        let long_key =
            PutRequest { key: vec![b'k'; (16 << 10) + 1], value: b"v".to_vec(), ..Default::default() };
        assert_eq!(code(c.put(long_key).await), ResourceExhausted);
        let far_get = GetRequest { key: b"a".to_vec(), timestamp: Some(far), ..Default::default() };
        assert_eq!(code(c.get(far_get).await), OutOfRange);
        let far_put = PutRequest {
            key: b"a".to_vec(),
            value: b"w".to_vec(),
            if_timestamp: Some(far),
            ..Default::default()
        };
        assert_eq!(code(c.put(far_put).await), OutOfRange);
        let far_scan = ScanRequest { limit: 10, timestamp: Some(far), ..Default::default() };
        let scanned = match c.scan(far_scan).await {
            Ok(stream) => stream.into_inner().message().await.map(|_| ()),
            Err(s) => Err(s),
        };
        assert_eq!(scanned.unwrap_err().code(), OutOfRange);
        let bad_after = GetRequest { key: b"a".to_vec(), after: "x:1".into(), ..Default::default() };
        assert_eq!(code(c.get(bad_after).await), InvalidArgument);

        // Bytes that are not a GetRequest (field 1 is a number, not bytes): the sender's fault.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raw = tonic::client::Grpc::new(channel);
        raw.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/cairn.kv.v1.Kv/Get");
        let codec = cairn_proto::codec::StrictCodec::<Timestamp, cairn_proto::kv::GetResponse>::default();
        let r = raw.unary(tonic::Request::new(Timestamp { wall_time: 5, logical: 0 }), path, codec).await;
        assert_eq!(r.unwrap_err().code(), InvalidArgument);
    });

    // The CLI: a far-future read is refused with the reason; a timestamp past i64 is not one; an empty
    // key is refused before it is sent.
    let (ok, _, err) = cairn(&["kv", "get", "a", "--timestamp", &far.wall_time.to_string(), "--addr", &grpc]);
    assert!(!ok && err.contains("ahead"), "{err}");
    let (ok, _, err) =
        cairn(&["kv", "get", "a", "--timestamp", "18446744073709551615.4294967295", "--addr", &grpc]);
    assert!(!ok && err.contains("bad --timestamp"), "{err}");
    let (ok, _, err) = cairn(&["kv", "put", "", "v", "--addr", &grpc]);
    assert!(!ok && err.contains("empty"), "{err}");
    let (ok, out, err) = cairn(&["kv", "get", "a", "--addr", &grpc]);
    assert!(ok && out.trim() == "v", "{out} {err}");

    // The clock did not move: a new write is stamped now.
    let before = now_ns();
    let at = written_at(&s, "later");
    assert!(at < before + 5_000_000_000, "stamped {at}, now {before}");
    s.stop();
}

/// Reads from `stream` until the server closes it (or 20 s pass); how long that took.
fn time_until_closed(mut stream: TcpStream) -> Duration {
    let start = Instant::now();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn http_clients_cannot_hold_connections_forever() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = ["--http-header-read-timeout-ms", "1000", "--http-max-connections", "2"];
    let s = Server::start(&tmp.path().join("store"), &limits);

    // Slowloris: one header byte every 200 ms is cut off at the header-read timeout, not held.
    let slow = TcpStream::connect(s.addr).unwrap();
    let mut writer = slow.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for b in b"GET /kv/rest/entry/a HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if writer.write_all(&[*b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    });
    let held = time_until_closed(slow);
    assert!(held < Duration::from_secs(10), "a trickling client held its connection {held:?}");
    assert!(held >= Duration::from_millis(900), "closed after {held:?}, before the timeout");
    // An idle connection is closed at the same timeout.
    let held = time_until_closed(TcpStream::connect(s.addr).unwrap());
    assert!(held < Duration::from_secs(10), "an idle client held its connection {held:?}");
    let _ = trickle.join();

    // A head over the size limit gets 431 (written from another thread: the server may stop reading
    // before the client stops writing).
    let mut big = TcpStream::connect(s.addr).unwrap();
    let mut writer = big.try_clone().unwrap();
    let huge = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(200 << 10));
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(huge.as_bytes());
    });
    big.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = [0u8; 12];
    big.read_exact(&mut head).expect("an answer to an oversized head");
    assert_eq!(&head, b"HTTP/1.1 431", "{}", String::from_utf8_lossy(&head));
    let _ = sending.join();
    s.stop();

    // With both connection slots held (and a header timeout far off), a third client waits; once one
    // is released, it is served at once.
    let limits = ["--http-header-read-timeout-ms", "60000", "--http-max-connections", "2"];
    let s = Server::start(&tmp.path().join("store"), &limits);
    let first = TcpStream::connect(s.addr).unwrap();
    let _second = TcpStream::connect(s.addr).unwrap();
    let mut third = TcpStream::connect(s.addr).unwrap();
    write!(third, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    third.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 64];
    assert!(third.read(&mut buf).is_err(), "a third connection was served while two were held");
    drop(first);
    third.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = Vec::new();
    third.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    s.stop();
}

#[test]
fn large_values_page_through_rest_and_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("store"), &[]);
    let value = vec![b'x'; 1 << 20];
    for i in 0..6 {
        let r = s.call("PUT", &format!("/kv/rest/entry/big-{i}"), &value);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // One page holds what the byte budget allows (4 MiB by default), then says where to resume.
    let mut start = "big-".to_string();
    let mut keys = Vec::new();
    let mut pages = 0;
    loop {
        let r = s.call("GET", &format!("/kv/rest/range?start={start}&end=big-~&limit=100"), b"");
        assert_eq!(r.status, 200);
        assert!(r.body.len() < 7 << 20, "a page of {} bytes", r.body.len());
        let page = r.json();
        pages += 1;
        for row in page["rows"].as_array().unwrap() {
            keys.push(row["key"].as_str().unwrap().to_string());
        }
        match page["header"]["resume_start"].as_str() {
            Some(next) => start = next.to_string(),
            None => break,
        }
        assert!(pages < 10, "no end to the pages");
    }
    assert!(pages >= 2, "six 1 MiB values fit one page");
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");

    // The CLI pages through the same scan over gRPC.
    let (ok, out, err) = cairn(&["kv", "scan", "--start", "big-", "--addr", &s.grpc.to_string()]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 6);
    assert!(out.lines().all(|l| l.len() == 6 + (1 << 20)), "every row whole");
    s.stop();
}
