//! cairn-compare: runs the same workloads, with byte-identical keys and values (cairn-bench's), against
//! cairn-engine, RocksDB, fjall and cobble, and prints each engine's results and a cairn / other ratio
//! table.
//!
//! Every engine runs in its own child process (this binary, re-executed with `--child ENGINE`): peak
//! RSS is then per engine, and no engine's caches or background threads linger into another's
//! measurements. Children print JSON lines (`protocol`); the parent collects and prints them.

mod child;
mod cli;
mod engines;
mod parent;
mod protocol;

use clap::Parser;

fn main() {
    let args = cli::Args::parse();
    let result = match args.child {
        Some(kind) => child::run(kind, &args),
        None => parent::run(&args),
    };
    if let Err(e) = result {
        eprintln!("cairn-compare: {e}");
        std::process::exit(1);
    }
}
