//! The rendezvous server's durable store: a `redb` database holding the
//! registry's [`Change`] log and a periodic snapshot (`spec/registry.md` §11).
//!
//! Layout: table `log` maps a sequence number to one JSON-encoded `Change`;
//! table `meta` holds `snapshot` (the reference's JSON snapshot format) and
//! `snapshot_seq` (the last log entry the snapshot already contains). Startup
//! loads the snapshot and replays every later change. Each call to
//! [`Store::commit`] is one redb write transaction, durable (fsynced) when it
//! returns.

use std::path::Path;

use pilot_proto::registry::server::{Change, State};
use pilot_proto::registry::snapshot::{Snapshot, SnapshotError};
use pilot_proto::time::Instant;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT_KEY: &str = "snapshot";
const SNAPSHOT_SEQ_KEY: &str = "snapshot_seq";

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("store: {0}")]
    Db(String),
    /// A stored change could not be decoded.
    #[error("store: corrupt change #{seq}: {err}")]
    BadChange {
        /// Its sequence number.
        seq: u64,
        /// Why.
        err: serde_json::Error,
    },
    /// A change could not be encoded.
    #[error("store: encode change: {0}")]
    Encode(serde_json::Error),
    /// The stored or imported snapshot is invalid.
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
}

fn dberr<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The open store.
pub struct Store {
    db: Database,
    /// Next sequence number to write.
    next_seq: u64,
    /// Log entries written since the last snapshot.
    since_snapshot: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("next_seq", &self.next_seq)
            .field("since_snapshot", &self.since_snapshot)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(dberr)?;
        let tx = db.begin_write().map_err(dberr)?;
        {
            tx.open_table(LOG).map_err(dberr)?;
            tx.open_table(META).map_err(dberr)?;
        }
        tx.commit().map_err(dberr)?;
        let mut store = Store {
            db,
            next_seq: 1,
            since_snapshot: 0,
        };
        let rtx = store.db.begin_read().map_err(dberr)?;
        let log = rtx.open_table(LOG).map_err(dberr)?;
        if let Some((k, _)) = log.last().map_err(dberr)? {
            store.next_seq = k.value().saturating_add(1);
        }
        store.since_snapshot = log.len().map_err(dberr)?;
        Ok(store)
    }

    /// Loads the state: the snapshot (or a fresh state at `now`), then every
    /// later change replayed in order. Returns the state and the number of
    /// replayed changes.
    pub fn load(&self, now: Instant) -> Result<(State, u64), StoreError> {
        let rtx = self.db.begin_read().map_err(dberr)?;
        let meta = rtx.open_table(META).map_err(dberr)?;
        let (mut state, after) = match meta.get(SNAPSHOT_KEY).map_err(dberr)? {
            Some(bytes) => {
                let snap = Snapshot::from_json(bytes.value())?;
                let (state, _report) = snap.into_state(now);
                let seq = meta
                    .get(SNAPSHOT_SEQ_KEY)
                    .map_err(dberr)?
                    .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                (state, seq)
            }
            None => (State::new(now), 0),
        };
        let log = rtx.open_table(LOG).map_err(dberr)?;
        let mut replayed = 0;
        for entry in log.range(after.saturating_add(1)..).map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            let change: Change =
                serde_json::from_slice(v.value()).map_err(|err| StoreError::BadChange {
                    seq: k.value(),
                    err,
                })?;
            state.apply(&change);
            replayed += 1;
        }
        Ok((state, replayed))
    }

    /// Appends `changes` in one durable write transaction (nothing to do for
    /// an empty batch).
    pub fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let encoded = changes
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Encode)?;
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut log = tx.open_table(LOG).map_err(dberr)?;
            for (seq, bytes) in (self.next_seq..).zip(encoded.iter()) {
                log.insert(seq, bytes.as_slice()).map_err(dberr)?;
            }
        }
        tx.commit().map_err(dberr)?;
        let n = encoded.len() as u64;
        self.next_seq += n;
        self.since_snapshot += n;
        Ok(())
    }

    /// Log entries written since the last snapshot.
    pub fn since_snapshot(&self) -> u64 {
        self.since_snapshot
    }

    /// Compacts: writes `state` (which must include every change committed so
    /// far) as the snapshot and deletes the log entries it covers, in one
    /// transaction.
    pub fn compact(&mut self, state: &State) -> Result<(), StoreError> {
        let json = Snapshot::from_state(state).to_json()?;
        let upto = self.next_seq.saturating_sub(1);
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut meta = tx.open_table(META).map_err(dberr)?;
            meta.insert(SNAPSHOT_KEY, json.as_slice()).map_err(dberr)?;
            meta.insert(SNAPSHOT_SEQ_KEY, upto.to_be_bytes().as_slice())
                .map_err(dberr)?;
            let mut log = tx.open_table(LOG).map_err(dberr)?;
            log.retain(|k, _| k > upto).map_err(dberr)?;
        }
        tx.commit().map_err(dberr)?;
        self.since_snapshot = 0;
        Ok(())
    }

    /// Replaces the whole content with an imported reference snapshot.
    pub fn import(&mut self, json: &[u8], now: Instant) -> Result<State, StoreError> {
        let (state, _report) = Snapshot::from_json(json)?.into_state(now);
        self.compact(&state)?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pilot_proto::registry::server::NodeRecord;

    fn node(id: u32) -> Change {
        Change::PutNode(Box::new(NodeRecord {
            id,
            owner: String::new(),
            public_key: [id as u8; 32],
            real_addr: "127.0.0.1:4000".into(),
            lan_addrs: vec![],
            networks: vec![0],
            public: false,
            last_seen: Instant::from_nanos(1_767_225_600_000_000_000),
            hostname: format!("h{id}"),
            tags: vec![],
            polo_score: 0,
            task_exec: false,
            version: String::new(),
        }))
    }

    #[test]
    fn commits_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let now = Instant::from_nanos(1_767_225_600_000_000_000);
        let mut expected = State::new(now);
        {
            let mut s = Store::open(&path).unwrap();
            let a = [node(1), Change::NextNode(2)];
            s.commit(&a).unwrap();
            a.iter().for_each(|c| expected.apply(c));
            s.compact(&expected).unwrap();
            let b = [node(2), Change::NextNode(3), Change::TrustAdd(1, 2)];
            s.commit(&b).unwrap();
            b.iter().for_each(|c| expected.apply(c));
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.since_snapshot(), 3);
        let (got, replayed) = s.load(now).unwrap();
        assert_eq!(replayed, 3);
        assert_eq!(got.nodes, expected.nodes);
        assert_eq!(got.trust_pairs, expected.trust_pairs);
        assert_eq!(got.next_node, expected.next_node);
    }
}
