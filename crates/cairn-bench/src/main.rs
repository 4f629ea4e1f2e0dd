//! cairn-bench: db_bench-style workloads printing ops/s, MB/s, latency percentiles and amplification.
//!
//! `cairn-bench engine` drives one `cairn_engine::Db` in-process; later subcommands measure the cluster.
// A benchmark tool: failing loudly on a broken invariant is the right response, not an error path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine;
mod engine_args;
mod engine_reads;
mod raft;
mod rescale;
mod snapshot;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cairn-bench", about = "Benchmarks for cairn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// db_bench-style workloads against one in-process engine shard.
    Engine(engine_args::EngineArgs),
    /// Shard snapshot, global snapshot, restore and incremental-copy costs at several data sizes.
    Snapshot(snapshot::SnapshotArgs),
    /// Online rescale: the handoff pause, bytes copied and reclamation time of moving a bucket range.
    Rescale(rescale::RescaleArgs),
    /// YCSB-style workloads against a running node's REST API.
    Http(cairn_bench::kv::KvArgs),
    /// YCSB-style workloads against a running node's gRPC API.
    Grpc(cairn_bench::kv::KvArgs),
    /// The same workloads against an etcd v3 server (linearizable reads), for compare/etcd.sh.
    Etcd(cairn_bench::kv::KvArgs),
    /// Bank transfers as transactions, against cairn or (for compare/etcd-bank.sh) etcd.
    Bank(cairn_bench::bank::BankArgs),
    /// One three-replica shard group in-process over gRPC on loopback: replicated puts, then strong,
    /// lease and eventual reads.
    Raft(raft::RaftArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Engine(args) => engine::run(&args),
        Command::Snapshot(args) => snapshot::run(&args),
        Command::Rescale(args) => rescale::run(&args),
        Command::Http(args) => cairn_bench::kv::run(&args, cairn_bench::kv::Target::Http),
        Command::Grpc(args) => cairn_bench::kv::run(&args, cairn_bench::kv::Target::Grpc),
        Command::Etcd(args) => cairn_bench::kv::run(&args, cairn_bench::kv::Target::Etcd),
        Command::Raft(args) => raft::run(&args),
        Command::Bank(args) => cairn_bench::bank::run(&args),
    };
    if let Err(e) = result {
        eprintln!("cairn-bench: {e}");
        std::process::exit(1);
    }
}
