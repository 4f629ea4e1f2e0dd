//! `cairn-bench bank`: money transfers between accounts, each a read-modify-write of two keys run as
//! one transaction, against cairn (its gRPC `Txn` service: begin, get both, put both, commit) or, for
//! side-by-side comparisons (`compare/etcd-bank.sh`), etcd v3 (read both keys with linearizable
//! ranges, then one `Txn` that writes both if neither key's `mod_revision` changed).
//!
//! `--accounts` accounts (keys `acct-0` …) start with 10,000 each (`--opened`: as an earlier run left
//! them; `--transfers 0` only opens them); `--clients` concurrent clients run `--transfers` transfers
//! of 1 to 10 between two distinct accounts drawn at random (none that would go negative). A transfer
//! that conflicts (cairn: a retryable error; etcd: a failed comparison) runs again at once, up to
//! [`MAX_ATTEMPTS`] times. Against cairn, account keys are chosen from the cluster's shard map: spread
//! over the shards (consecutive accounts in different shards: every transfer between two accounts is
//! a cross-shard transaction, and with more accounts most are) or, with `--same-shard`, all in one.
//! Prints transfers/s, the latency of a whole transfer (retries included; the clock starts once every
//! client is connected) and how many attempts conflicted. The accounts are read before and after (one
//! range scan each): every balance must have moved by exactly what the committed transfers moved, the
//! total be unchanged and none negative.

use crate::histogram::Histogram;
use crate::kv::etcdpb;
use crate::rng::Rng;
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Each account's opening balance.
const START: i64 = 10_000;
/// Most attempts of one transfer before the run fails.
pub const MAX_ATTEMPTS: u32 = 1_000;

#[derive(Args, Debug, Clone)]
pub struct BankArgs {
    /// `cairn` (gRPC transactions) or `etcd` (v3 gRPC, compare-and-swap on `mod_revision`).
    #[arg(long, default_value = "cairn")]
    pub target: String,
    /// The nodes' gRPC addresses, comma-separated: clients are spread over them round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub addr: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Accounts (at least 2): fewer means more contention.
    #[arg(long, default_value_t = 2)]
    pub accounts: usize,
    /// Transfers in all.
    #[arg(long, default_value_t = 10_000)]
    pub transfers: u64,
    /// cairn's isolation level: `serializable` or `snapshot`.
    #[arg(long, default_value = "serializable")]
    pub isolation: String,
    /// cairn: every account in one shard (by default they are spread over the shards).
    #[arg(long)]
    pub same_shard: bool,
    /// The accounts exist already (an earlier run opened them): transfers start from their balances.
    #[arg(long)]
    pub opened: bool,
    /// Seed of the account and amount choices.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// One client's connection.
enum Bank {
    Cairn(cairn_client::Client, cairn_client::kv::Isolation),
    Etcd(etcdpb::kv_client::KvClient<tonic::transport::Channel>),
}

/// How one attempt of a transfer ended.
enum Attempt {
    /// Committed: the money moved (`true`), or the account held too little (`false`).
    Done(bool),
    Conflict,
}

impl Bank {
    async fn open(args: &BankArgs, addr: &str) -> Result<Bank, String> {
        match args.target.as_str() {
            "cairn" => {
                let isolation = match args.isolation.as_str() {
                    "serializable" => cairn_client::kv::Isolation::Serializable,
                    "snapshot" => cairn_client::kv::Isolation::Snapshot,
                    other => return Err(format!("--isolation {other:?}: serializable or snapshot")),
                };
                let client = cairn_client::Client::connect(addr).await.map_err(|e| e.to_string())?;
                Ok(Bank::Cairn(client, isolation))
            }
            "etcd" => etcdpb::kv_client::KvClient::connect(format!("http://{addr}"))
                .await
                .map(Bank::Etcd)
                .map_err(|e| format!("cannot connect to etcd at {addr}: {e}")),
            other => Err(format!("--target {other:?}: cairn or etcd")),
        }
    }

    async fn open_accounts(&mut self, keys: &[String]) -> Result<(), String> {
        let value = START.to_string().into_bytes();
        for key in keys {
            match self {
                Bank::Cairn(c, _) => {
                    c.put(key.as_bytes(), &value).await.map_err(|e| e.to_string())?;
                }
                Bank::Etcd(c) => {
                    let put =
                        etcdpb::PutRequest { key: key.as_bytes().to_vec(), value: value.clone(), lease: 0 };
                    c.put(put).await.map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// One attempt to move `amount` from `from` to `to` (nothing if `from` holds less).
    async fn transfer(&mut self, from: &str, to: &str, amount: i64) -> Result<Attempt, String> {
        match self {
            Bank::Cairn(c, isolation) => {
                let outcome = async {
                    let mut t = c.begin(*isolation).await?;
                    let a = t.get(from.as_bytes()).await?.map(|(v, _)| v);
                    let b = t.get(to.as_bytes()).await?.map(|(v, _)| v);
                    let (a, b) = match (balance(a), balance(b)) {
                        (Ok(a), Ok(b)) => (a, b),
                        (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
                    };
                    let moved = a >= amount;
                    if moved {
                        t.put(from.as_bytes(), (a - amount).to_string().as_bytes()).await?;
                        t.put(to.as_bytes(), (b + amount).to_string().as_bytes()).await?;
                    }
                    t.commit().await.map(|_| Ok(moved))
                }
                .await;
                match outcome {
                    Ok(Ok(moved)) => Ok(Attempt::Done(moved)),
                    Ok(Err(e)) => Err(e),
                    Err(e) if cairn_client::must_retry(&e) => Ok(Attempt::Conflict),
                    Err(e) => Err(e.to_string()),
                }
            }
            Bank::Etcd(c) => {
                let (a, ra) = etcd_read(c, from).await?;
                let (b, rb) = etcd_read(c, to).await?;
                if a < amount {
                    return Ok(Attempt::Done(false));
                }
                let unchanged = |key: &str, revision| etcdpb::Compare {
                    result: etcdpb::compare::CompareResult::Equal as i32,
                    target: etcdpb::compare::CompareTarget::Mod as i32,
                    key: key.as_bytes().to_vec(),
                    target_union: Some(etcdpb::compare::TargetUnion::ModRevision(revision)),
                    range_end: Vec::new(),
                };
                let put = |key: &str, value: i64| etcdpb::RequestOp {
                    request: Some(etcdpb::request_op::Request::RequestPut(etcdpb::PutRequest {
                        key: key.as_bytes().to_vec(),
                        value: value.to_string().into_bytes(),
                        lease: 0,
                    })),
                };
                let txn = etcdpb::TxnRequest {
                    compare: vec![unchanged(from, ra), unchanged(to, rb)],
                    success: vec![put(from, a - amount), put(to, b + amount)],
                    failure: Vec::new(),
                };
                let answer = c.txn(txn).await.map_err(|e| e.to_string())?.into_inner();
                Ok(if answer.succeeded { Attempt::Done(true) } else { Attempt::Conflict })
            }
        }
    }

    /// Every account's balance (of `keys`, in order), read by one range scan of the accounts' keys.
    async fn audit(&mut self, keys: &[String]) -> Result<Vec<i64>, String> {
        let mut found = std::collections::HashMap::new();
        match self {
            Bank::Cairn(c, _) => {
                let mut start = b"acct-".to_vec();
                loop {
                    let (rows, resume) =
                        c.scan_page(&start, Some(b"acct."), 1000, None).await.map_err(|e| e.to_string())?;
                    found.extend(rows.into_iter().map(|r| (r.key, r.value)));
                    match resume {
                        Some(next) => start = next,
                        None => break,
                    }
                }
            }
            Bank::Etcd(c) => {
                // One linearizable range over the accounts' keys: one revision.
                let range = etcdpb::RangeRequest {
                    key: b"acct-".to_vec(),
                    range_end: b"acct.".to_vec(),
                    ..Default::default()
                };
                let kvs = c.range(range).await.map_err(|e| e.to_string())?.into_inner().kvs;
                found.extend(kvs.into_iter().map(|kv| (kv.key, kv.value)));
            }
        }
        keys.iter().map(|k| balance(found.remove(k.as_bytes()))).collect()
    }
}

fn balance(value: Option<Vec<u8>>) -> Result<i64, String> {
    let value = value.ok_or("an account has no balance")?;
    String::from_utf8_lossy(&value).parse().map_err(|e| format!("a balance does not parse: {e}"))
}

async fn etcd_read(
    c: &mut etcdpb::kv_client::KvClient<tonic::transport::Channel>,
    key: &str,
) -> Result<(i64, i64), String> {
    let range = etcdpb::RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() };
    let kvs = c.range(range).await.map_err(|e| e.to_string())?.into_inner().kvs;
    let kv = kvs.into_iter().next().ok_or_else(|| format!("account {key} is missing"))?;
    Ok((balance(Some(kv.value))?, kv.mod_revision))
}

/// The accounts' keys: `acct-<i>` for etcd; for cairn `acct-<i>-<n>`, `n` the first that puts the key
/// in the shard the layout wants (see the module's description).
async fn account_keys(args: &BankArgs) -> Result<Vec<String>, String> {
    if args.target != "cairn" {
        return Ok((0..args.accounts).map(|i| format!("acct-{i}")).collect());
    }
    let map = cairn_client::ClusterClient::connect(&args.addr).await.map_err(|e| e.to_string())?;
    let shards = map.shard_ids();
    let mut keys = Vec::with_capacity(args.accounts);
    for i in 0..args.accounts {
        let want = if args.same_shard { shards.first() } else { shards.get(i % shards.len().max(1)) };
        let key = (0..100_000)
            .map(|n| format!("acct-{i}-{n}"))
            .find(|k| want.is_none() || map.shard_of(k.as_bytes()) == want.copied())
            .ok_or_else(|| format!("no key of account {i} falls in shard {want:?}"))?;
        keys.push(key);
    }
    Ok(keys)
}

/// Runs the benchmark (see the module's description).
pub fn run(args: &BankArgs) -> Result<(), String> {
    if args.clients == 0 || args.accounts < 2 || args.addr.is_empty() {
        return Err("need --addr, --clients > 0 and --accounts >= 2".into());
    }
    if args.same_shard && args.target != "cairn" {
        return Err("--same-shard is for cairn".into());
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let keys = Arc::new(account_keys(args).await?);
        println!(
            "cairn-bench bank {}: {} clients over {} address(es), {} accounts{}, {} transfers{}",
            args.target,
            args.clients,
            args.addr.len(),
            args.accounts,
            match (args.target.as_str(), args.same_shard) {
                ("cairn", true) => " in one shard",
                ("cairn", false) => " spread over the shards",
                _ => "",
            },
            args.transfers,
            if args.target == "cairn" { format!(", {}", args.isolation) } else { String::new() },
        );
        let mut first = Bank::open(args, &args.addr[0]).await?;
        if !args.opened {
            first.open_accounts(&keys).await?;
        }
        let before = first.audit(&keys).await?;
        if args.transfers == 0 {
            return Ok(());
        }
        let mut banks = Vec::with_capacity(args.clients);
        for c in 0..args.clients {
            banks.push(Bank::open(args, &args.addr[c % args.addr.len()]).await?);
        }
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (c, mut bank) in banks.into_iter().enumerate() {
            let (keys, next, transfers) = (Arc::clone(&keys), Arc::clone(&next), args.transfers);
            let mut rng = Rng::new(args.seed ^ (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            tasks.push(tokio::spawn(async move {
                let mut latency = Histogram::default();
                let mut conflicts = 0u64;
                // What this client's transfers moved, per account.
                let mut moved = vec![0i64; keys.len()];
                while next.fetch_add(1, Ordering::Relaxed) < transfers {
                    let n = keys.len() as u64;
                    let from = rng.below(n) as usize;
                    let to = (from + 1 + rng.below(n - 1) as usize) % keys.len();
                    let amount = 1 + rng.below(10) as i64;
                    let begun = Instant::now();
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        match bank.transfer(&keys[from], &keys[to], amount).await? {
                            Attempt::Done(done) => {
                                if done {
                                    moved[from] -= amount;
                                    moved[to] += amount;
                                }
                                break;
                            }
                            Attempt::Conflict if attempts < MAX_ATTEMPTS => conflicts += 1,
                            Attempt::Conflict => {
                                return Err(format!("a transfer conflicted {MAX_ATTEMPTS} times in a row"));
                            }
                        }
                    }
                    latency.record(u64::try_from(begun.elapsed().as_nanos()).unwrap_or(u64::MAX));
                }
                Ok::<_, String>((latency, conflicts, moved))
            }));
        }
        let mut latency = Histogram::default();
        let mut conflicts = 0;
        let mut expected = before.clone();
        for task in tasks {
            let (h, c, moved) = task.await.map_err(|e| e.to_string())??;
            latency.merge(&h);
            conflicts += c;
            for (balance, m) in expected.iter_mut().zip(moved) {
                *balance += m;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let done = latency.count();
        let ms = |q: f64| latency.quantile(q) as f64 / 1e6;
        println!(
            "transfers {:>9.0} ops/s  ({done} transfers in {secs:.2} s, {conflicts} conflicting attempts: {:.1}% of {})",
            done as f64 / secs,
            100.0 * conflicts as f64 / (done + conflicts).max(1) as f64,
            done + conflicts
        );
        println!(
            "  transfer {done:>9} ops  p50 {:>8.3} ms  p99 {:>8.3} ms  p999 {:>8.3} ms  max {:>8.3} ms",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            latency.max() as f64 / 1e6
        );
        // Every committed transfer is in the balances exactly once, and nothing else is.
        let balances = first.audit(&keys).await?;
        let total: i64 = balances.iter().sum();
        if balances != expected || total != START * keys.len() as i64 || balances.iter().any(|b| *b < 0) {
            return Err(format!("the audit does not add up: {balances:?}, expected {expected:?}"));
        }
        println!("audit    total {total} over {} accounts: every transfer there once", balances.len());
        Ok(())
    })
}
