//! `cairn backup`: backups of a whole cluster at one timestamp (over gRPC, through any member; see
//! docs/backup.md).

use crate::ClientArgs;
use cairn_proto::backup as pb;
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub(crate) enum BackupCommand {
    /// Take a backup of every shard at one timestamp into --to; prints progress, then the backup's id.
    Create(CreateArgs),
    /// List the complete backups at --from, oldest first.
    List(AtArgs),
    /// Show one backup: its timestamp and shards.
    Show(IdArgs),
    /// Read a backup back: every file present, every shard's rows matching the digest taken with it.
    Verify(IdArgs),
    /// Delete a backup, and the files no other backup at the URL shares.
    Delete(IdArgs),
}

#[derive(Args, Debug)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Where: file:///absolute/path (a directory every node reaches at that path) or
    /// s3://bucket/prefix?endpoint=URL&region=R (credentials from the nodes' environment).
    #[arg(long)]
    to: String,
    /// The timestamp (WALL.LOGICAL, nanoseconds since the Unix epoch); default now. No older than
    /// about half of gc_ttl ago.
    #[arg(long)]
    as_of: Option<String>,
    /// Keep only the newest N backups at the URL (deleting older ones and the files only they use).
    #[arg(long)]
    keep: Option<u32>,
}

#[derive(Args, Debug)]
pub(crate) struct AtArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Where the backups are (as given to `create --to`).
    #[arg(long)]
    from: String,
}

#[derive(Args, Debug)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    at: AtArgs,
    /// The backup's id.
    id: u64,
}

#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    at: AtArgs,
    /// The backup's id (`cairn backup list`).
    #[arg(long)]
    backup: u64,
    /// Restore into a cluster that holds keys: each key the backup holds gets its state as of the
    /// backup as a new version.
    #[arg(long)]
    overwrite: bool,
}

/// Runs `cairn restore`.
pub(crate) async fn restore(a: RestoreArgs) -> Result<ExitCode, String> {
    let mut c = client(&a.at.client.addr).await?;
    let request = pb::RestoreRequest { from: a.at.from, id: a.backup, overwrite: a.overwrite };
    let mut stream =
        c.restore(request).await.map_err(|s| format!("restore refused: {}", s.message()))?.into_inner();
    loop {
        match stream.message().await {
            Ok(Some(p)) if p.done => {
                if a.at.client.json {
                    println!(
                        "{}",
                        serde_json::json!({"backup": a.backup, "keys": p.keys, "versions": p.versions,
                            "versions_trimmed": p.versions_trimmed})
                    );
                } else {
                    println!("{}", p.message);
                    if p.versions_trimmed > 0 {
                        println!(
                            "({} older versions of keys with long histories were left out)",
                            p.versions_trimmed
                        );
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Some(p)) => eprintln!(
                "[{}/{} shard snapshots, {} keys] {}",
                p.shards_done, p.shards_total, p.keys, p.message
            ),
            Ok(None) => return Err("the restore ended without an answer".into()),
            Err(s) => return Err(format!("restore failed: {}", s.message())),
        }
    }
}

async fn client(addr: &str) -> Result<pb::backup_client::BackupClient<tonic::transport::Channel>, String> {
    pb::backup_client::BackupClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| format!("cannot reach {addr}: {e}"))
}

fn info_json(b: &pb::BackupInfo) -> serde_json::Value {
    let shards: Vec<_> = b
        .shards
        .iter()
        .map(|s| {
            serde_json::json!({"shard": s.shard, "ranges": s.ranges.chunks(2).collect::<Vec<_>>(),
                "files": s.files, "bytes": s.bytes, "rows": s.rows})
        })
        .collect();
    serde_json::json!({"id": b.id, "as_of": b.as_of, "created_at_ms": b.created_at_ms,
        "cluster_id": b.cluster_id, "total_buckets": b.total_buckets, "bytes_uploaded": b.bytes_uploaded,
        "shards": shards})
}

fn summary(b: &pb::BackupInfo) -> String {
    let bytes: u64 = b.shards.iter().map(|s| s.bytes).sum();
    let rows: u64 = b.shards.iter().map(|s| s.rows).sum();
    format!(
        "{:>6}  {:>30}  {:>15}  {:>6}  {:>12}  {:>10}",
        b.id,
        b.as_of,
        b.created_at_ms,
        b.shards.len(),
        bytes,
        rows
    )
}

const HEADER: &str =
    "    id                           as of    created (ms)  shards         bytes        rows";

/// Runs a `cairn backup` command.
pub(crate) async fn run(command: BackupCommand) -> Result<ExitCode, String> {
    match command {
        BackupCommand::Create(a) => {
            let mut c = client(&a.client.addr).await?;
            let request = pb::CreateBackupRequest {
                to: a.to,
                as_of: a.as_of.unwrap_or_default(),
                keep: a.keep.unwrap_or(0),
            };
            let mut stream =
                c.create(request).await.map_err(|s| format!("backup refused: {}", s.message()))?.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(p)) => match p.done {
                        Some(done) if a.client.json => {
                            println!("{}", info_json(&done));
                            return Ok(ExitCode::SUCCESS);
                        }
                        Some(done) => {
                            let bytes: u64 = done.shards.iter().map(|s| s.bytes).sum();
                            println!(
                                "backup {} at {}: {} shards, {bytes} bytes ({} uploaded)",
                                done.id,
                                done.as_of,
                                done.shards.len(),
                                done.bytes_uploaded
                            );
                            return Ok(ExitCode::SUCCESS);
                        }
                        None => eprintln!(
                            "[{}/{} shards, {} bytes uploaded] {}",
                            p.shards_done, p.shards_total, p.bytes_uploaded, p.message
                        ),
                    },
                    Ok(None) => return Err("the backup ended without an answer: list the backups".into()),
                    Err(s) => return Err(format!("backup failed: {}", s.message())),
                }
            }
        }
        BackupCommand::List(a) => {
            let mut c = client(&a.client.addr).await?;
            let reply = c.list(pb::ListBackupsRequest { url: a.from }).await;
            let backups =
                reply.map_err(|s| format!("cannot list them: {}", s.message()))?.into_inner().backups;
            if a.client.json {
                println!("{}", serde_json::Value::Array(backups.iter().map(info_json).collect()));
            } else {
                println!("{HEADER}");
                for b in &backups {
                    println!("{}", summary(b));
                }
            }
        }
        BackupCommand::Show(a) => {
            let mut c = client(&a.at.client.addr).await?;
            let reply = c.show(pb::BackupRequest { url: a.at.from, id: a.id }).await;
            let b = reply.map_err(|s| format!("cannot show it: {}", s.message()))?.into_inner();
            if a.at.client.json {
                println!("{}", info_json(&b));
            } else {
                println!("{HEADER}\n{}", summary(&b));
                println!(
                    "cluster {}, {} buckets, {} bytes uploaded",
                    b.cluster_id, b.total_buckets, b.bytes_uploaded
                );
                println!(
                    "{:>6}  {:>20}  {:>6}  {:>12}  {:>10}",
                    "shard", "buckets", "files", "bytes", "rows"
                );
                for s in &b.shards {
                    let ranges: Vec<String> =
                        s.ranges.chunks(2).map(|r| format!("{}-{}", r[0], r[r.len() - 1])).collect();
                    println!(
                        "{:>6}  {:>20}  {:>6}  {:>12}  {:>10}",
                        s.shard,
                        ranges.join(","),
                        s.files,
                        s.bytes,
                        s.rows
                    );
                }
            }
        }
        BackupCommand::Verify(a) => {
            let mut c = client(&a.at.client.addr).await?;
            match c.verify(pb::BackupRequest { url: a.at.from, id: a.id }).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if a.at.client.json {
                        println!(
                            "{}",
                            serde_json::json!({"shards": r.shards, "files": r.files, "bytes": r.bytes, "rows": r.rows})
                        );
                    } else {
                        println!(
                            "backup {} is whole: {} shards, {} files, {} bytes, {} rows match their digests",
                            a.id, r.shards, r.files, r.bytes, r.rows
                        );
                    }
                }
                Err(s) if s.code() == tonic::Code::DataLoss => {
                    eprintln!("backup {} is damaged: {}", a.id, s.message());
                    return Ok(ExitCode::from(2));
                }
                Err(s) => return Err(format!("cannot verify it: {}", s.message())),
            }
        }
        BackupCommand::Delete(a) => {
            let mut c = client(&a.at.client.addr).await?;
            match c.delete(pb::BackupRequest { url: a.at.from, id: a.id }).await {
                Ok(r) => println!(
                    "deleted backup {} ({} shard snapshots no other backup used)",
                    a.id,
                    r.into_inner().shard_snapshots_removed
                ),
                Err(s) if s.code() == tonic::Code::NotFound => {
                    eprintln!("{}", s.message());
                    return Ok(ExitCode::from(1));
                }
                Err(s) => return Err(format!("cannot delete it: {}", s.message())),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
