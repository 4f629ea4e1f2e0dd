//! fjall with its defaults: one database holding one keyspace (its column family).

use super::{Engine, Result, err};
use ::fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::Path;

pub const NOTES: &[&str] = &[
    "Database::builder defaults, one keyspace with KeyspaceCreateOptions::default (lz4)",
    "writes go to the journal and the OS per insert; sync writes add Database::persist(SyncData)",
    "full compaction: rotate_memtable_and_wait + major_compact (public but doc-hidden in fjall 3)",
    "disk size includes the journal fjall keeps after the flush (tables it replaced are gone once closed)",
];

struct Fjall {
    // Field order is drop order: the keyspace handle goes before the database.
    keyspace: Keyspace,
    db: Database,
}

pub fn open(dir: &Path) -> Result<Box<dyn Engine>> {
    let db = Database::builder(dir).open().map_err(err("fjall open"))?;
    let keyspace = db.keyspace("bench", KeyspaceCreateOptions::default).map_err(err("fjall keyspace"))?;
    Ok(Box::new(Fjall { keyspace, db }))
}

impl Engine for Fjall {
    fn put(&self, _bucket: u16, key: &[u8], value: &[u8], sync: bool) -> Result<()> {
        self.keyspace.insert(key, value).map_err(err("fjall insert"))?;
        if sync {
            self.db.persist(PersistMode::SyncData).map_err(err("fjall persist"))?;
        }
        Ok(())
    }

    fn get(&self, _bucket: u16, key: &[u8]) -> Result<Option<usize>> {
        let value = self.keyspace.get(key).map_err(err("fjall get"))?;
        Ok(value.map(|v| v.len()))
    }

    fn scan_all(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let mut rows = 0;
        for guard in self.keyspace.iter() {
            let (key, value) = guard.into_inner().map_err(err("fjall scan"))?;
            visit(&key, &value);
            rows += 1;
        }
        Ok(rows)
    }

    fn flush_and_compact(&self) -> Result<()> {
        self.keyspace.rotate_memtable_and_wait().map_err(err("fjall flush"))?;
        self.keyspace.major_compact().map_err(err("fjall compact"))
    }

    fn close(self: Box<Self>) -> Result<()> {
        // fjall persists its journal when the database is dropped.
        self.db.persist(PersistMode::SyncAll).map_err(err("fjall persist"))?;
        drop(self);
        Ok(())
    }
}
