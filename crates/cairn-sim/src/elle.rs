//! A checker of transactional isolation over list-append histories, after Elle (Kingsbury and Alvaro,
//! "Elle: Inferring Isolation Anomalies from Experimental Observations", VLDB 2020). Transactions append
//! unique values to lists and read whole lists; because every read shows the order of every append it
//! saw, the order of a key's versions can be recovered from the reads, and with it the dependencies
//! between transactions (Adya's write-write, write-read and read-write edges, plus real-time order).
//! A cycle in that graph is an anomaly, named by the edges it needs:
//!
//! | anomaly | cycle of | forbidden under |
//! |---|---|---|
//! | G0 (write cycle) | write-write edges only | every level |
//! | G1c (circular information flow) | write-write and write-read edges | every level |
//! | G-single (read skew, lost update) | exactly one read-write edge | snapshot isolation and above |
//! | G2-item (write skew) | two or more read-write edges | serializable |
//! | any of them, `realtime` | needs a real-time edge too | strict serializable |
//!
//! Besides cycles it finds what no level allows: reads of aborted appends (G1a), reads of a
//! transaction's intermediate state (G1b), reads of values nobody appended, duplicates in a list, two
//! reads of a key that disagree on its order, and a transaction whose reads contradict its own writes.
//!
//! Limits: appended values must be unique per key; a committed append nobody read is not placed in the
//! order (and adds no edges); snapshot isolation's G-nonadjacent cycles are reported as G2-item.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Append `value` to the list at `key`.
    Append {
        /// The key.
        key: u64,
        /// The value (unique per key across the history).
        value: u64,
    },
    /// Read the list at `key`: what it held (`None`: the read's result is unknown).
    Read {
        /// The key.
        key: u64,
        /// The list, oldest append first.
        list: Option<Vec<u64>>,
    },
}

/// How a transaction ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed.
    Committed,
    /// Aborted: none of its appends may be seen.
    Aborted,
    /// Unknown (a timeout, a lost connection): it may or may not have committed.
    Unknown,
}

/// A transaction in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    /// Its operations, in order.
    pub ops: Vec<Op>,
    /// How it ended.
    pub outcome: Outcome,
    /// When its client began it (any monotonic unit).
    pub invoked: u64,
    /// When its client learnt the outcome (`None` for an unknown outcome).
    pub completed: Option<u64>,
}

/// An isolation level to hold a history to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Snapshot isolation: write skew (G2-item) allowed.
    SnapshotIsolation,
    /// Serializable.
    Serializable,
    /// Serializable in an order that respects real time.
    StrictSerializable,
}

/// What kind of anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A transaction's reads disagree with its own earlier reads and appends.
    Internal,
    /// A read holds a value no transaction appended to that key.
    Garbage,
    /// A read holds a value twice.
    Duplicate,
    /// Two reads of a key disagree on the order of its values (neither is a prefix of the other).
    IncompatibleOrder,
    /// G1a: a read holds an aborted transaction's append.
    AbortedRead,
    /// G1b: a read ends at a value its transaction appended to that key before appending another.
    IntermediateRead,
    /// G0: a cycle of write-write edges.
    G0,
    /// G1c: a cycle of write-write and write-read edges.
    G1c,
    /// G-single: a cycle with exactly one read-write edge.
    GSingle,
    /// G2-item: a cycle with two or more read-write edges.
    G2Item,
}

impl Kind {
    /// Whether `level` forbids this kind (a `realtime` cycle counts only under strict serializability).
    pub fn forbidden_under(self, level: Level, realtime: bool) -> bool {
        if realtime && level < Level::StrictSerializable {
            return false;
        }
        match self {
            Kind::G2Item => level >= Level::Serializable,
            _ => true,
        }
    }
}

/// One anomaly found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// Its kind.
    pub kind: Kind,
    /// For a cycle: whether it needs a real-time edge.
    pub realtime: bool,
    /// The transactions involved (indexes into the history; a cycle in order).
    pub txns: Vec<usize>,
    /// What was seen.
    pub detail: String,
}

/// Everything [`check`] found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The anomalies, in no particular order.
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    /// The anomalies `level` forbids.
    pub fn violations(&self, level: Level) -> Vec<&Anomaly> {
        self.anomalies.iter().filter(|a| a.kind.forbidden_under(level, a.realtime)).collect()
    }
}

/// Why one transaction must come before another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Edge {
    /// It wrote a version the other overwrote.
    WriteWrite,
    /// The other read a version it wrote.
    WriteRead,
    /// It read a version the other overwrote.
    ReadWrite,
    /// It completed before the other began.
    Realtime,
}

/// Checks `history` (see the module's description) and reports every anomaly found.
pub fn check(history: &[Txn]) -> Report {
    let mut report = Report::default();
    // Who appended each (key, value).
    let mut writer: HashMap<(u64, u64), usize> = HashMap::new();
    // Per transaction and key: the values it appended, in order.
    let mut appends: Vec<BTreeMap<u64, Vec<u64>>> = vec![BTreeMap::new(); history.len()];
    for (t, txn) in history.iter().enumerate() {
        for op in &txn.ops {
            if let Op::Append { key, value } = *op {
                writer.insert((key, value), t);
                appends[t].entry(key).or_default().push(value);
            }
        }
    }
    let visible = |t: usize| history[t].outcome != Outcome::Aborted;
    internal(history, &mut report);
    // Committed transactions' reads, by key: the version orders and the edges come from these only (a
    // transaction of unknown outcome may have read, then aborted on what it read).
    let mut reads: BTreeMap<u64, Vec<(usize, &Vec<u64>)>> = BTreeMap::new();
    for (t, txn) in history.iter().enumerate().filter(|(t, _)| visible(*t)) {
        for op in &txn.ops {
            let Op::Read { key, list: Some(list) } = op else { continue };
            if txn.outcome == Outcome::Committed {
                reads.entry(*key).or_default().push((t, list));
            }
            let mut seen = HashSet::new();
            for (pos, v) in list.iter().enumerate() {
                if !seen.insert(*v) {
                    report.anomalies.push(anomaly(
                        Kind::Duplicate,
                        vec![t],
                        format!("key {key}: {v} twice in {list:?}"),
                    ));
                }
                match writer.get(&(*key, *v)) {
                    None => report.anomalies.push(anomaly(
                        Kind::Garbage,
                        vec![t],
                        format!("key {key}: {v} was never appended"),
                    )),
                    Some(&w) if !visible(w) => report.anomalies.push(anomaly(
                        Kind::AbortedRead,
                        vec![w, t],
                        format!("key {key}: {v} was appended by an aborted transaction"),
                    )),
                    Some(&w) if w != t && pos + 1 == list.len() => {
                        let own = &appends[w][key];
                        if own.last() != Some(v) {
                            report.anomalies.push(anomaly(
                                Kind::IntermediateRead,
                                vec![w, t],
                                format!(
                                    "key {key}: the read ends at {v}, which its writer followed with more"
                                ),
                            ));
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }
    // Each key's version order: its longest read, which every other read must be a prefix of.
    let mut order: BTreeMap<u64, &Vec<u64>> = BTreeMap::new();
    for (key, rs) in &reads {
        let Some(&(_, longest)) = rs.iter().max_by_key(|(_, l)| l.len()) else { continue };
        for &(t, list) in rs {
            if !longest.starts_with(list) {
                report.anomalies.push(anomaly(
                    Kind::IncompatibleOrder,
                    vec![t],
                    format!("key {key}: read {list:?} is not a prefix of read {longest:?}"),
                ));
            }
        }
        order.insert(*key, longest);
    }
    let graph = dependencies(history, &writer, &reads, &order);
    cycles(&graph, history.len(), &mut report);
    report
}

fn anomaly(kind: Kind, txns: Vec<usize>, detail: String) -> Anomaly {
    Anomaly { kind, realtime: false, txns, detail }
}

/// Finds transactions whose reads disagree with what they themselves read and appended before.
fn internal(history: &[Txn], report: &mut Report) {
    for (t, txn) in history.iter().enumerate() {
        // Per key: the list as the transaction knows it (`None` before it read the key), and what it
        // appended since (all of it, if it never read).
        let mut known: HashMap<u64, (Option<Vec<u64>>, Vec<u64>)> = HashMap::new();
        for op in &txn.ops {
            match op {
                Op::Append { key, value } => known.entry(*key).or_default().1.push(*value),
                Op::Read { key, list: Some(list) } => {
                    let (before, since) = known.entry(*key).or_default();
                    let fine = match before {
                        Some(before) => {
                            list.len() == before.len() + since.len()
                                && list.starts_with(before)
                                && list.ends_with(since)
                        }
                        None => list.ends_with(since),
                    };
                    if !fine {
                        report.anomalies.push(anomaly(
                            Kind::Internal,
                            vec![t],
                            format!(
                                "key {key}: read {list:?} after reading {before:?} and appending {since:?}"
                            ),
                        ));
                    }
                    *before = Some(list.clone());
                    since.clear();
                }
                Op::Read { list: None, .. } => {}
            }
        }
    }
}

/// The dependency graph: edges from each transaction, with why.
type Graph = Vec<BTreeMap<usize, Edge>>;

fn add(graph: &mut Graph, from: usize, to: usize, edge: Edge) {
    if from != to {
        // One edge per pair; the strongest reason kept (write-write, then write-read, read-write,
        // real time), so a cycle is classified by the weakest anomaly it shows.
        let e = graph[from].entry(to).or_insert(edge);
        *e = (*e).min(edge);
    }
}

fn dependencies(
    history: &[Txn],
    writer: &HashMap<(u64, u64), usize>,
    reads: &BTreeMap<u64, Vec<(usize, &Vec<u64>)>>,
    order: &BTreeMap<u64, &Vec<u64>>,
) -> Graph {
    let mut graph: Graph = vec![BTreeMap::new(); history.len()];
    // Aborted transactions are in no order (reading their appends is G1a, reported apart).
    let who =
        |key: u64, v: u64| writer.get(&(key, v)).copied().filter(|&w| history[w].outcome != Outcome::Aborted);
    for (key, versions) in order {
        for pair in versions.windows(2) {
            if let (Some(a), Some(b)) = (who(*key, pair[0]), who(*key, pair[1])) {
                add(&mut graph, a, b, Edge::WriteWrite);
            }
        }
    }
    for (key, rs) in reads {
        let versions = order[key];
        for &(t, list) in rs {
            if let Some(w) = list.last().and_then(|v| who(*key, *v)) {
                add(&mut graph, w, t, Edge::WriteRead);
            }
            if let Some(next) = versions.get(list.len()).and_then(|v| who(*key, *v)) {
                add(&mut graph, t, next, Edge::ReadWrite);
            }
        }
    }
    realtime(history, &mut graph);
    graph
}

/// Adds real-time edges, transitively reduced: at each transaction's start, an edge from each one that
/// completed before it and has no completed successor that also did.
fn realtime(history: &[Txn], graph: &mut Graph) {
    // (time, 0 = completion before 1 = invocation at the same time, transaction)
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (t, txn) in history.iter().enumerate().filter(|(_, x)| x.outcome == Outcome::Committed) {
        events.push((txn.invoked, 1, t));
        if let Some(done) = txn.completed {
            events.push((done, 0, t));
        }
    }
    events.sort_unstable();
    let mut frontier: HashSet<usize> = HashSet::new();
    let mut preceded: HashMap<usize, Vec<usize>> = HashMap::new();
    for (_, kind, t) in events {
        if kind == 1 {
            for &f in &frontier {
                add(graph, f, t, Edge::Realtime);
            }
            preceded.insert(t, frontier.iter().copied().collect());
        } else {
            for p in preceded.remove(&t).unwrap_or_default() {
                frontier.remove(&p);
            }
            frontier.insert(t);
        }
    }
}

/// The cycle searches, weakest anomaly first (the first to find a cycle names it): a kind, whether it
/// may use real-time edges, and the edges it may use (a G-single search: besides exactly one read-write
/// edge).
const SEARCHES: [(Kind, bool, &[Edge]); 7] = {
    use Edge::{ReadWrite as Rw, Realtime as Rt, WriteRead as Wr, WriteWrite as Ww};
    [
        (Kind::G0, false, &[Ww]),
        (Kind::G1c, false, &[Ww, Wr]),
        (Kind::GSingle, false, &[Ww, Wr]),
        (Kind::G2Item, false, &[Ww, Wr, Rw]),
        (Kind::G1c, true, &[Ww, Wr, Rt]),
        (Kind::GSingle, true, &[Ww, Wr, Rt]),
        (Kind::G2Item, true, &[Ww, Wr, Rw, Rt]),
    ]
};

/// Finds a cycle in each strongly connected component and classifies it by the weakest edges it needs.
fn cycles(graph: &Graph, n: usize, report: &mut Report) {
    for mut component in components(graph, n) {
        if component.len() < 2 {
            continue;
        }
        component.sort_unstable();
        let inside: HashSet<usize> = component.iter().copied().collect();
        for (kind, realtime, edges) in SEARCHES {
            let found = if kind == Kind::GSingle {
                single(graph, &component, &inside, edges)
            } else {
                component.iter().find_map(|&t| path(graph, &inside, t, t, edges))
            };
            if let Some(txns) = found {
                let detail = describe(graph, &txns);
                report.anomalies.push(Anomaly { kind, realtime, txns, detail });
                break;
            }
        }
    }
}

/// The edges of cycle `txns`, for a report.
fn describe(graph: &Graph, txns: &[usize]) -> String {
    let mut out = String::new();
    for (i, &t) in txns.iter().enumerate() {
        let next = txns[(i + 1) % txns.len()];
        let edge = graph[t].get(&next).map_or("?".to_string(), |e| format!("{e:?}"));
        out.push_str(&format!("T{t} -{edge}-> "));
    }
    if let Some(first) = txns.first() {
        out.push_str(&format!("T{first}"));
    }
    out
}

/// A shortest path from `from` to `to` inside `inside` over `edges` only: the transactions from `from`
/// on, with `to` last unless it is `from` (then the path is a cycle back to it).
fn path(
    graph: &Graph,
    inside: &HashSet<usize>,
    from: usize,
    to: usize,
    edges: &[Edge],
) -> Option<Vec<usize>> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([from]);
    let mut seen = HashSet::from([from]);
    while let Some(t) = queue.pop_front() {
        for (&next, &edge) in &graph[t] {
            if !inside.contains(&next) || !edges.contains(&edge) {
                continue;
            }
            if next == to {
                let mut out = vec![t];
                let mut at = t;
                while let Some(&p) = parent.get(&at) {
                    out.push(p);
                    at = p;
                }
                out.reverse();
                if to != from {
                    out.push(to);
                }
                return Some(out);
            }
            if seen.insert(next) {
                parent.insert(next, t);
                queue.push_back(next);
            }
        }
    }
    None
}

/// A cycle through `component` (sorted; `inside` holds the same) of exactly one read-write edge and
/// otherwise `edges`.
fn single(graph: &Graph, component: &[usize], inside: &HashSet<usize>, edges: &[Edge]) -> Option<Vec<usize>> {
    for &a in component {
        for (&b, &edge) in &graph[a] {
            if edge != Edge::ReadWrite || !inside.contains(&b) {
                continue;
            }
            if let Some(mut back) = path(graph, inside, b, a, edges) {
                // b ... a, then the read-write edge a -> b closes it.
                back.rotate_right(1);
                return Some(back);
            }
        }
    }
    None
}

/// Strongly connected components (Tarjan's algorithm, iterative).
fn components(graph: &Graph, n: usize) -> Vec<Vec<usize>> {
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    let mut next = 0;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        // (node, its successors not yet visited)
        let mut work: Vec<(usize, Vec<usize>)> = vec![(root, graph[root].keys().copied().collect())];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some((v, succ)) = work.last_mut() {
            let v = *v;
            if let Some(w) = succ.pop() {
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, graph[w].keys().copied().collect()));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some((parent, _)) = work.last() {
                low[*parent] = low[*parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(component);
            }
        }
    }
    out
}
