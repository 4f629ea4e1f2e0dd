//! The `cairn` binary: `cairn start` runs a node, `cairn demo` runs a ready-to-use local database.
//!
//! Settings come from, in rising precedence: defaults, a TOML file (`--config`), `CAIRN_*` environment
//! variables, and flags.

use cairn_server::node::NodeConfig;
use cairn_server::{ServerConfig, serve, shutdown_signal};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "cairn", version, about = "cairn: a replicated, sharded key-value database")]
struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, global = true, env = "CAIRN_LOG", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node serving the store in --store.
    Start(StartArgs),
    /// Run a ready-to-use local database in ./cairn-demo-data and print how to talk to it.
    Demo(DemoArgs),
}

#[derive(Args, Debug, Default)]
struct NodeArgs {
    /// TOML file with any of the settings below (flags and CAIRN_* variables override it).
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, env = "CAIRN_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Shards a new store is split into.
    #[arg(long, env = "CAIRN_SHARDS")]
    shards: Option<usize>,
    /// Acknowledge writes before they are fsynced (they still survive a process crash, not power loss).
    #[arg(long, env = "CAIRN_NO_SYNC")]
    no_sync: bool,
    /// Largest value accepted, in bytes.
    #[arg(long, env = "CAIRN_MAX_VALUE_BYTES")]
    max_value_bytes: Option<usize>,
    /// How long old versions stay readable, in seconds.
    #[arg(long, env = "CAIRN_GC_TTL_SECS")]
    gc_ttl_secs: Option<u64>,
}

#[derive(Args, Debug)]
struct StartArgs {
    /// The store directory (created if missing).
    #[arg(long, env = "CAIRN_STORE")]
    store: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Where the demo keeps its data.
    #[arg(long, env = "CAIRN_STORE", default_value = "cairn-demo-data")]
    store: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

/// The TOML file's shape: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    store: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    shards: Option<usize>,
    sync: Option<bool>,
    max_value_bytes: Option<usize>,
    gc_ttl_secs: Option<u64>,
}

fn load_file(path: &Path) -> Result<FileConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
}

fn build_config(
    store: Option<PathBuf>,
    args: &NodeArgs,
    default_http: SocketAddr,
) -> Result<ServerConfig, String> {
    let file = match &args.config {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    let store = store
        .or(file.store)
        .ok_or("no store: pass --store <dir> (or CAIRN_STORE, or `store` in --config)")?;
    let mut node = NodeConfig::new(store);
    if let Some(n) = args.shards.or(file.shards) {
        if n == 0 || n > 1024 {
            return Err(format!("--shards must be 1..=1024, got {n}"));
        }
        node.shards = n;
    }
    node.sync = !args.no_sync && file.sync.unwrap_or(true);
    if let Some(n) = args.max_value_bytes.or(file.max_value_bytes) {
        if n == 0 || n > (64 << 20) {
            return Err(format!("--max-value-bytes must be 1..=67108864, got {n}"));
        }
        node.max_value_bytes = n;
    }
    if let Some(s) = args.gc_ttl_secs.or(file.gc_ttl_secs) {
        node.gc_ttl = Duration::from_secs(s);
    }
    Ok(ServerConfig { node, http_addr: args.http_addr.or(file.http_addr).unwrap_or(default_http) })
}

fn demo_banner(addr: SocketAddr, store: &Path) -> String {
    let base = format!("http://{addr}");
    format!(
        "cairn demo is running: HTTP on {base}, data in {store}\n\
         \n\
         Try it (Ctrl-C stops the demo; the data stays for next time):\n\
         \x20 curl -X POST -d 'Hello' {base}/kv/rest/entry/Cockroach\n\
         \x20 curl {base}/kv/rest/entry/Cockroach\n\
         \x20 curl '{base}/kv/rest/range?start=Ca&end=Cozz&limit=10'\n\
         \x20 curl -X DELETE {base}/kv/rest/entry/Cockroach\n\
         \x20 curl {base}/_status\n\
         \x20 curl {base}/metrics\n",
        store = store.display()
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level);
    let Ok(filter) = filter else {
        eprintln!("cairn: bad --log-level {:?}", cli.log_level);
        return ExitCode::from(2);
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let (config, demo) = match &cli.command {
        Command::Start(a) => {
            (build_config(a.store.clone(), &a.node, SocketAddr::from(([127, 0, 0, 1], 8080))), false)
        }
        Command::Demo(a) => {
            (build_config(Some(a.store.clone()), &a.node, SocketAddr::from(([127, 0, 0, 1], 8080))), true)
        }
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let store = config.node.store.clone();
    let result = runtime.block_on(serve(config, shutdown_signal(), move |addr| {
        // One machine-readable line first (tests and scripts read it), then the human text.
        println!("cairn listening http={addr}");
        if demo {
            println!("{}", demo_banner(addr, &store));
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: {e}");
            ExitCode::from(1)
        }
    }
}
