//! `cairn txn`: a small batch of reads, writes and deletes run as one transaction on a running node
//! (over gRPC), retried from its start while the cluster says it must run again.

use crate::{ClientArgs, b64, ts_json, ts_text};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct TxnArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Snapshot isolation (write skew allowed) instead of serializable.
    #[arg(long)]
    snapshot: bool,
    /// The operations, in order: `get:KEY`, `put:KEY=VALUE`, `del:KEY`.
    #[arg(required = true)]
    ops: Vec<String>,
}

enum Op {
    Get(String),
    Put(String, String),
    Del(String),
}

fn parse(op: &str) -> Result<Op, String> {
    let bad = || format!("bad operation {op:?}: get:KEY, put:KEY=VALUE or del:KEY");
    match op.split_once(':').ok_or_else(bad)? {
        ("get", key) if !key.is_empty() => Ok(Op::Get(key.into())),
        ("del", key) if !key.is_empty() => Ok(Op::Del(key.into())),
        ("put", kv) => match kv.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok(Op::Put(key.into(), value.into())),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// Runs `cairn txn`: prints each get's value (or `(none)`), then the commit timestamp.
pub(crate) async fn run(args: TxnArgs) -> Result<ExitCode, String> {
    let ops = args.ops.iter().map(|o| parse(o)).collect::<Result<Vec<_>, _>>()?;
    let client = cairn_client::Client::connect(&args.client.addr).await.map_err(|e| e.to_string())?;
    let isolation = if args.snapshot {
        cairn_client::kv::Isolation::Snapshot
    } else {
        cairn_client::kv::Isolation::Serializable
    };
    let (reads, ts) = client
        .txn(isolation, async |t| {
            let mut reads = Vec::new();
            for op in &ops {
                match op {
                    Op::Get(key) => reads.push((key.clone(), t.get(key.as_bytes()).await?)),
                    Op::Put(key, value) => t.put(key.as_bytes(), value.as_bytes()).await?,
                    Op::Del(key) => t.delete(key.as_bytes()).await?,
                }
            }
            Ok(reads)
        })
        .await
        .map_err(|e| e.to_string())?;
    if args.client.json {
        let reads: Vec<_> = reads
            .iter()
            .map(|(k, v)| match v {
                Some((value, at)) => serde_json::json!({"key": b64(k.as_bytes()), "value": b64(value), "timestamp": ts_json(at)}),
                None => serde_json::json!({"key": b64(k.as_bytes()), "value": null}),
            })
            .collect();
        println!("{}", serde_json::json!({"reads": reads, "timestamp": ts_json(&ts)}));
    } else {
        for (key, value) in &reads {
            match value {
                Some((v, _)) => println!("{key}\t{}", String::from_utf8_lossy(v)),
                None => println!("{key}\t(none)"),
            }
        }
        println!("committed {}", ts_text(&ts));
    }
    Ok(ExitCode::SUCCESS)
}
