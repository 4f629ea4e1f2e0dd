//! The store's layout on disk (`<store>/LAYOUT.json`): the bucket space, the shards' bucket ranges and,
//! for a replicated store, the node's identity. Fixed when the store is created; written atomically.

use crate::config::NodeConfig;
use crate::error::{NodeError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The store's layout, fixed when it is created (`<store>/LAYOUT.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Layout {
    /// The store's data format (2: version rows plus a latest row per key).
    #[serde(default)]
    format: u32,
    pub(crate) total_buckets: u32,
    pub(crate) shards: Vec<(u16, u16)>,
    /// A replicated store's identity: this node and the members, fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replication: Option<LayoutReplication>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LayoutReplication {
    node_id: u64,
    members: BTreeMap<u64, String>,
}

/// The layout's file in the store.
pub(crate) const LAYOUT_FILE: &str = "LAYOUT.json";
/// A cluster member's identity file in its store.
pub(crate) const IDENTITY_FILE: &str = "CLUSTER.json";

/// The data format this build writes and reads.
const STORE_FORMAT: u32 = 2;

fn even_split(total_buckets: u32, shards: usize) -> Vec<(u16, u16)> {
    let shards = shards.clamp(1, total_buckets as usize) as u32;
    (0..shards)
        .map(|i| ((total_buckets * i / shards) as u16, (total_buckets * (i + 1) / shards - 1) as u16))
        .collect()
}

/// Reads a JSON file the store keeps (`None`: there is none).
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| NodeError::Startup(format!("{} is not valid: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeError::Startup(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Replaces a JSON file the store keeps, atomically and durably (write, fsync, rename, fsync the dir).
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let io = |e: std::io::Error| NodeError::Startup(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| NodeError::Startup(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// Reads the store's layout, creating it for a new store; refuses a store of another format or identity.
pub(crate) fn load_layout(config: &NodeConfig) -> Result<Layout> {
    if config.total_buckets == 0 || config.total_buckets > cairn_engine::MAX_TOTAL_BUCKETS {
        return Err(NodeError::Startup(format!("total_buckets {} out of range", config.total_buckets)));
    }
    std::fs::create_dir_all(&config.store)
        .map_err(|e| NodeError::Startup(format!("cannot create store {}: {e}", config.store.display())))?;
    let identity = config
        .replication
        .as_ref()
        .map(|r| LayoutReplication { node_id: r.node_id, members: r.members.clone() });
    if config.store.join(IDENTITY_FILE).exists() {
        return Err(NodeError::Startup(format!(
            "store {} belongs to a cluster member: start it with --join",
            config.store.display()
        )));
    }
    let layout_path = config.store.join(LAYOUT_FILE);
    let layout = match read_json::<Layout>(&layout_path)? {
        Some(layout) => layout,
        None => {
            let layout = Layout {
                format: STORE_FORMAT,
                total_buckets: config.total_buckets,
                shards: even_split(config.total_buckets, config.shards),
                replication: identity.clone(),
            };
            write_json(&layout_path, &layout)?;
            layout
        }
    };
    let store = config.store.display();
    if layout.format != STORE_FORMAT {
        return Err(NodeError::Startup(format!(
            "store {store} has data format {}; this cairn reads format {STORE_FORMAT}",
            layout.format
        )));
    }
    match (&layout.replication, &identity) {
        (None, None) => {}
        (Some(_), None) => {
            return Err(NodeError::Startup(format!(
                "store {store} belongs to a replicated node: start it with its --node-id and --peers"
            )));
        }
        (None, Some(_)) => {
            return Err(NodeError::Startup(format!(
                "store {store} is a standalone store: it cannot join a replicated group"
            )));
        }
        (Some(ours), Some(given)) if ours != given => {
            return Err(NodeError::Startup(format!(
                "store {store} was created as node {} of {:?}, not node {} of {:?} (a node id is never \
                 reused, and membership is fixed at creation)",
                ours.node_id, ours.members, given.node_id, given.members
            )));
        }
        (Some(_), Some(_)) => {}
    }
    Ok(layout)
}
