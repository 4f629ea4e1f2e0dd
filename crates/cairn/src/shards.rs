//! `cairn shards`: split, merge and list a cluster's shards; `cairn settings`: show and change the
//! cluster settings that drive automatic splits and merges and garbage collection; `cairn protect`:
//! protected timestamps (over gRPC, through any member).

use crate::ClientArgs;
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub(crate) enum ShardsCommand {
    /// Split SHARD at bucket --at (by default the bucket that halves its live data): a new shard takes
    /// the shard's buckets from there on, with the same replicas, by reference (no bytes copied). A single bucket never splits; the bucket space
    /// (`total_buckets`, fixed at `cairn init`) bounds how many shards a cluster can have.
    Split(SplitArgs),
    /// Merge shard RIGHT into its left-hand neighbour LEFT (RIGHT's buckets start where LEFT's end):
    /// their replicas are brought onto the same nodes, RIGHT is frozen and LEFT imports its files by
    /// reference (no bytes copied); RIGHT's id is never used again.
    Merge(MergeArgs),
    /// List the shards as the meta group's leader knows them: buckets, replicas, epoch, generation, and
    /// any split or replica move under way.
    List(ClientArgs),
}

#[derive(Args, Debug)]
pub(crate) struct SplitArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The shard to split (`cairn status` lists them).
    shard: u32,
    /// The first bucket the new shard takes: above the shard's first bucket, one it owns. By default
    /// the bucket that halves the shard's live data (the middle of its buckets if it holds none).
    #[arg(long)]
    at: Option<u32>,
}

#[derive(Args, Debug)]
pub(crate) struct MergeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The shard that takes the buckets.
    left: u32,
    /// Its right-hand neighbour, merged in.
    right: u32,
}

/// Runs a `cairn shards` command.
pub(crate) async fn run(command: ShardsCommand) -> Result<ExitCode, String> {
    match command {
        ShardsCommand::Split(a) => split_command(a).await,
        ShardsCommand::Merge(a) => merge_command(a).await,
        ShardsCommand::List(a) => list_shards_command(a).await,
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum SettingsCommand {
    /// Print the cluster settings.
    Show(ClientArgs),
    /// Change one setting cluster-wide: split_size (bytes; KiB, MiB or GiB suffixes; 0: no splits by
    /// size), split_qps (0: no splits by load), split_load_secs, auto_merge (true or false), rebalance
    /// (true or false), dead_after_secs or gc_ttl (seconds old versions stay readable; 0: forever).
    Set(SetArgs),
}

#[derive(Args, Debug)]
pub(crate) struct SetArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The setting.
    name: String,
    /// Its new value.
    value: String,
}

/// Runs a `cairn settings` command: prints the settings (after the change, for `set`).
pub(crate) async fn settings(command: SettingsCommand) -> Result<ExitCode, String> {
    let (args, reply) = match command {
        SettingsCommand::Show(args) => {
            let mut client = cluster_client(&args.addr).await?;
            let reply = client.settings(cairn_proto::cluster::SettingsRequest {}).await;
            (args, reply.map_err(|s| format!("cannot read the settings: {}", s.message()))?)
        }
        SettingsCommand::Set(a) => {
            let mut client = cluster_client(&a.client.addr).await?;
            let request = cairn_proto::cluster::SetSettingRequest { name: a.name, value: a.value };
            let reply = client.set_setting(request).await;
            (a.client, reply.map_err(|s| format!("setting refused: {}", s.message()))?)
        }
    };
    let json = reply.into_inner().settings_json;
    if args.json {
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("bad settings: {e}"))?;
    let mut flat = Vec::new();
    flatten("", &value, &mut flat);
    for (name, v) in flat {
        println!("{name:<24} {v}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `value`'s leaves as (dotted name, value).
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(fields) => {
            for (k, v) in fields {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&name, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// A client of the Cluster service at `addr`.
async fn cluster_client(
    addr: &str,
) -> Result<cairn_proto::cluster::cluster_client::ClusterClient<tonic::transport::Channel>, String> {
    cairn_proto::cluster::cluster_client::ClusterClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| format!("cannot reach {addr}: {e}"))
}

async fn merge_command(args: MergeArgs) -> Result<ExitCode, String> {
    let mut client = cluster_client(&args.client.addr).await?;
    let request = cairn_proto::cluster::MergeShardsRequest { left: args.left, right: args.right };
    client.merge_shards(request).await.map_err(|s| format!("merge refused: {}", s.message()))?;
    if args.client.json {
        println!("{}", serde_json::json!({"shard": args.left, "merging": args.right}));
    } else {
        println!("merging shard {} into shard {}", args.right, args.left);
    }
    Ok(ExitCode::SUCCESS)
}

async fn split_command(args: SplitArgs) -> Result<ExitCode, String> {
    let mut client = cluster_client(&args.client.addr).await?;
    if args.at == Some(0) {
        return Err("split refused: bucket 0 is every first shard's first bucket".into());
    }
    let request = cairn_proto::cluster::SplitShardRequest { shard: args.shard, at: args.at.unwrap_or(0) };
    let reply = client
        .split_shard(request)
        .await
        .map_err(|s| format!("split refused: {}", s.message()))?
        .into_inner();
    if args.client.json {
        println!(
            "{}",
            serde_json::json!({"shard": args.shard, "at": reply.at, "new_shard": reply.new_shard})
        );
    } else {
        println!(
            "splitting shard {} at bucket {}: shard {} takes the rest",
            args.shard, reply.at, reply.new_shard
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list_shards_command(args: ClientArgs) -> Result<ExitCode, String> {
    let mut client = cluster_client(&args.addr).await?;
    let reply = client
        .list_shards(cairn_proto::cluster::ListShardsRequest {})
        .await
        .map_err(|s| format!("cannot list the shards: {}", s.message()))?
        .into_inner();
    let ranges = |s: &cairn_proto::cluster::ShardInfo| -> String {
        s.ranges.iter().map(|r| format!("{}-{}", r.first, r.last)).collect::<Vec<_>>().join(",")
    };
    if args.json {
        let shards: Vec<serde_json::Value> = reply
            .shards
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id,
                    "ranges": s.ranges.iter().map(|r| [r.first, r.last]).collect::<Vec<_>>(),
                    "replicas": s.replicas,
                    "epoch": s.epoch,
                    "generation": s.generation,
                    "splitting": s.splitting.map(|p| serde_json::json!({"new_shard": p.new_shard, "at": p.at})),
                    "moving": s.moving.map(|m| serde_json::json!({"from": m.from, "to": m.to})),
                    "merging": s.merging,
                })
            })
            .collect();
        let out = serde_json::json!({"version": reply.version, "total_buckets": reply.total_buckets, "shards": shards});
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} shards over {} buckets (map version {})",
        reply.shards.len(),
        reply.total_buckets,
        reply.version
    );
    println!("{:>6}  {:<16} {:<12} {:>6} {:>4}  under way", "shard", "buckets", "replicas", "epoch", "gen");
    for s in &reply.shards {
        let replicas = s.replicas.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let mut doing = Vec::new();
        if let Some(p) = s.splitting {
            doing.push(format!("splitting at {} into shard {}", p.at, p.new_shard));
        }
        if let Some(m) = s.moving {
            doing.push(format!("moving a replica {} -> {}", m.from, m.to));
        }
        if let Some(r) = s.merging {
            doing.push(format!("merging shard {r} in"));
        }
        println!(
            "{:>6}  {:<16} {:<12} {:>6} {:>4}  {}",
            s.id,
            ranges(s),
            replicas,
            s.epoch,
            s.generation,
            doing.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub(crate) enum ProtectCommand {
    /// Keep every version a read at a timestamp sees readable on every shard, until released or
    /// expired; prints its id.
    Create(ProtectArgs),
    /// Print the protected timestamps held now.
    List(ClientArgs),
    /// Release a protected timestamp.
    Release(ReleaseArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ProtectArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Who holds it (a backup's id, your name).
    #[arg(long)]
    owner: String,
    /// The timestamp (WALL or WALL.LOGICAL, nanoseconds since the Unix epoch); default now. No older
    /// than about half of gc_ttl ago (see docs/cluster.md, "Old versions").
    #[arg(long)]
    at: Option<String>,
    /// How long it holds unless released first (1 to 2592000).
    #[arg(long, default_value_t = 3600)]
    expires_in_secs: u64,
}

#[derive(Args, Debug)]
pub(crate) struct ReleaseArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Its id.
    id: u64,
}

/// One protected timestamp as JSON.
fn protected_json(p: &cairn_proto::cluster::ProtectedTimestampInfo) -> serde_json::Value {
    serde_json::json!({
        "id": p.id, "wall_time": p.wall_time, "expires_at_ms": p.expires_at_ms, "owner": p.owner,
        "created_at_ms": p.created_at_ms,
    })
}

/// Runs a `cairn protect` command.
pub(crate) async fn protect(command: ProtectCommand) -> Result<ExitCode, String> {
    use cairn_proto::cluster::{ListProtectedRequest, ProtectRequest, ReleaseProtectedRequest};
    match command {
        ProtectCommand::Create(a) => {
            let wall_time = match &a.at {
                // The logical part is ignored: a protection holds a wall time (0 would mean now).
                Some(t) => cairn_server::hlc::Timestamp::parse(t)
                    .ok_or_else(|| format!("bad --at {t:?} (WALL or WALL.LOGICAL)"))?
                    .wall_time
                    .max(1),
                None => 0,
            };
            let mut client = cluster_client(&a.client.addr).await?;
            let request = ProtectRequest { wall_time, expires_in_secs: a.expires_in_secs, owner: a.owner };
            let p =
                client.protect(request).await.map_err(|s| format!("refused: {}", s.message()))?.into_inner();
            if a.client.json {
                println!("{}", protected_json(&p));
            } else {
                println!(
                    "protected timestamp {} at {}.0 until {} ms (owner {})",
                    p.id, p.wall_time, p.expires_at_ms, p.owner
                );
            }
        }
        ProtectCommand::List(args) => {
            let mut client = cluster_client(&args.addr).await?;
            let reply = client.list_protected(ListProtectedRequest {}).await;
            let held =
                reply.map_err(|s| format!("cannot list them: {}", s.message()))?.into_inner().protected;
            if args.json {
                println!("{}", serde_json::Value::Array(held.iter().map(protected_json).collect()));
            } else {
                println!("{:>6}  {:>21}  {:>15}  owner", "id", "wall time", "expires at ms");
                for p in held {
                    println!("{:>6}  {:>21}  {:>15}  {}", p.id, p.wall_time, p.expires_at_ms, p.owner);
                }
            }
        }
        ProtectCommand::Release(a) => {
            let mut client = cluster_client(&a.client.addr).await?;
            match client.release_protected(ReleaseProtectedRequest { id: a.id }).await {
                Ok(_) => println!("released protected timestamp {}", a.id),
                Err(s) if s.code() == tonic::Code::NotFound => {
                    eprintln!("{}", s.message());
                    return Ok(ExitCode::from(1));
                }
                Err(s) => return Err(format!("cannot release it: {}", s.message())),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
