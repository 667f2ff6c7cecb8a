//! The PostgreSQL store: several `pilot-rendezvous` frontends on one
//! database serve one network (`spec/registry.md` §11.3).
//!
//! Owns the schema and its migrations, commits of change sets, node-ID
//! block leases, and the follower thread that brings the other frontends'
//! commits into this one's registry.
//!
//! * Every record is a row of `pilot_records (key, value, rev, origin)`;
//!   a deleted record keeps its row with `value` NULL (a tombstone) so
//!   that followers learn of the deletion; tombstones older than
//!   [`TOMBSTONE_TTL`] are removed by the reaper frontend.
//! * Commits run concurrently (no global lock): each is one statement that
//!   upserts its rows in key order (so two commits never deadlock) and
//!   stamps them with its transaction number (`txid`, from
//!   `pg_current_xact_id()`). A row's `rev` grows in commit order per key:
//!   an update sets it above the row's previous `rev` (the row lock orders
//!   writers of one key), which is what decides between a remote row and
//!   a write of our own in flight.
//! * Followers read by visibility horizon: in one snapshot, every row whose
//!   `txid` lies between the previous horizon and this snapshot's `xmin`
//!   (the oldest transaction still running). Transactions below `xmin` are
//!   finished, and no later transaction gets a lower number, so no commit
//!   is ever skipped, whatever order the commits finish in.
//! * Each commit ends with `NOTIFY pilot_records`; followers `LISTEN` and
//!   fetch above their horizon, skipping their own rows.
//! * Node IDs come in blocks of [`ID_BLOCK`] from `pilot_node_block_seq`.
//! * The frontend whose follower holds the session advisory lock
//!   [`REAPER_LOCK`] reaps stale nodes; the others do not.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pilot_proto::registry::records::{ChangeSet, Loader};
use pilot_proto::registry::server::State;
use pilot_proto::time::UnixTime;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::store::{Committed, FollowEvent, FollowSink, RemoteRow, Store, StoreError};

/// Node IDs per leased block.
pub const ID_BLOCK: u32 = 16_384;
/// Attempts of one commit that PostgreSQL aborted as a deadlock or a
/// serialisation failure (not expected: rows are locked in key order).
const COMMIT_ATTEMPTS: u32 = 5;
/// Advisory lock serialising schema migrations at start-up.
const MIGRATE_LOCK: i64 = 0x7069_6c6f_0002;
/// Session advisory lock held by the one frontend that reaps.
pub const REAPER_LOCK: i64 = 0x7069_6c6f_0003;
/// Tombstones older than this are removed (a follower disconnected for
/// longer reloads the whole state anyway).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// Most rows a follower fetches per query.
const FOLLOW_BATCH: i64 = 10_000;
/// A follower re-checks for commits (and the reaper lock) this often even
/// without a notification.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// The schema, one migration per entry; `pilot_schema.version` counts the
/// ones applied.
const MIGRATIONS: &[&str] = &[
    // 1: records, revisions, node-ID blocks.
    "CREATE TABLE pilot_records (
        key bytea PRIMARY KEY,
        value bytea,
        rev bigint NOT NULL,
        origin bigint NOT NULL,
        changed timestamptz NOT NULL DEFAULT now()
     );
     CREATE INDEX pilot_records_rev ON pilot_records (rev, key);
     CREATE SEQUENCE pilot_rev_seq;
     CREATE SEQUENCE pilot_node_block_seq MINVALUE 0 START 0;",
    // 2: commits without a global lock; followers read by the writing
    // transaction's number.
    "ALTER TABLE pilot_records ADD COLUMN txid bigint NOT NULL DEFAULT 0;
     CREATE INDEX pilot_records_txid ON pilot_records (txid, key);",
    // 3: identities keyed by node ID (`0E id key`, empty value) instead of
    // by key (`03 key`, value the ID); the old rows become tombstones.
    "INSERT INTO pilot_records AS r (key, value, rev, origin, txid)
     SELECT '\\x0e'::bytea
                || substr(int8send(convert_from(value, 'UTF8')::bigint), 5, 4)
                || substr(key, 2),
            '\\x'::bytea, nextval('pilot_rev_seq'), 0, pg_current_xact_id()::text::bigint
     FROM pilot_records
     WHERE substr(key, 1, 1) = '\\x03'::bytea AND value IS NOT NULL
     ON CONFLICT (key) DO UPDATE
     SET value = EXCLUDED.value, rev = GREATEST(EXCLUDED.rev, r.rev + 1),
         origin = 0, txid = EXCLUDED.txid, changed = now();
     UPDATE pilot_records
     SET value = NULL, rev = nextval('pilot_rev_seq'), origin = 0,
         txid = pg_current_xact_id()::text::bigint, changed = now()
     WHERE substr(key, 1, 1) = '\\x03'::bytea AND value IS NOT NULL;",
];

/// The current transaction's number (`xid8`, never wraps).
const TXID: &str = "pg_current_xact_id()::text::bigint";
/// A commit's rows, `$1` keys, `$2` values (NULL: deleted), `$3` origin:
/// upserted in array order, then `NOTIFY pilot_records`; returns each
/// key's revision and the transaction's number.
static UPSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH c AS (SELECT nextval('pilot_rev_seq') AS rev, {TXID} AS txid),
         w AS (
             INSERT INTO pilot_records AS r (key, value, rev, origin, txid)
             SELECT t.k, t.v, c.rev, $3, c.txid
             FROM unnest($1::bytea[], $2::bytea[]) WITH ORDINALITY AS t(k, v, n), c
             ORDER BY t.n
             ON CONFLICT (key) DO UPDATE
             SET value = EXCLUDED.value, rev = GREATEST(EXCLUDED.rev, r.rev + 1),
                 origin = EXCLUDED.origin, txid = EXCLUDED.txid, changed = now()
             RETURNING r.key, r.rev, r.txid
         ),
         n AS (SELECT pg_notify('pilot_records', '')::text AS sent)
         SELECT w.key, w.rev, w.txid FROM w CROSS JOIN n"
    )
});

/// The oldest transaction still running in this snapshot (every lower
/// one has finished).
const HORIZON: &str = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

fn pgerr(e: postgres::Error) -> StoreError {
    // The server's message (with its SQLSTATE) when there is one.
    match e.as_db_error() {
        Some(db) => StoreError::Db(format!(
            "postgresql: {} ({})",
            db.message(),
            db.code().code()
        )),
        None => StoreError::Db(format!("postgresql: {e}")),
    }
}

/// The PostgreSQL store of one frontend.
pub struct PgStore {
    url: String,
    client: Client,
    /// This frontend's identity in `origin` (random per start).
    origin: i64,
    /// The visibility horizon of the loaded state (where the follower
    /// starts).
    loaded_horizon: i64,
    /// The last failure was a lost connection.
    broken: bool,
    /// [`UPSERT`], prepared on this connection.
    upsert: Option<postgres::Statement>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn random_origin() -> i64 {
    let mut b = [0u8; 8];
    if getrandom_fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = (t ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    // Positive, non-zero.
    (u64::from_le_bytes(b) >> 1).max(1) as i64
}

fn getrandom_fill(b: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(b)
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`), applies the
    /// schema migrations this version knows, and writes a fresh state at
    /// `now` if the database holds none.
    pub fn open(url: &str, now: UnixTime) -> Result<PgStore, StoreError> {
        let client = Client::connect(url, NoTls).map_err(pgerr)?;
        let mut store = PgStore {
            url: url.to_owned(),
            client,
            origin: random_origin(),
            loaded_horizon: 0,
            broken: false,
            upsert: None,
        };
        store.migrate(now)?;
        Ok(store)
    }

    fn migrate(&mut self, now: UnixTime) -> Result<(), StoreError> {
        let mut tx = self.client.transaction().map_err(pgerr)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
            .map_err(pgerr)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS pilot_schema (version integer NOT NULL)")
            .map_err(pgerr)?;
        let version: i32 = match tx
            .query_opt("SELECT version FROM pilot_schema", &[])
            .map_err(pgerr)?
        {
            Some(row) => row.get(0),
            None => {
                tx.execute("INSERT INTO pilot_schema (version) VALUES (0)", &[])
                    .map_err(pgerr)?;
                0
            }
        };
        let known = MIGRATIONS.len() as i32;
        if version > known {
            return Err(StoreError::Db(format!(
                "postgresql: schema version {version} is newer than this build's {known}"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).map_err(pgerr)?;
            tracing::info!(version = i + 1, "postgresql schema migrated");
        }
        tx.execute("UPDATE pilot_schema SET version = $1", &[&known])
            .map_err(pgerr)?;
        let empty: bool = tx
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM pilot_records WHERE value IS NOT NULL)",
                &[],
            )
            .map_err(pgerr)?
            .get(0);
        tx.commit().map_err(pgerr)?;
        if empty {
            self.apply(&[ChangeSet::full(&State::new(now))?])?;
        }
        Ok(())
    }

    /// Moves the node-block sequence past every ID `state` has handed out
    /// (a state imported or written by a single frontend before).
    fn advance_blocks(&mut self, state: &State) -> Result<(), StoreError> {
        let used = if state.next_node == 0 {
            u32::MAX
        } else {
            state.next_node
        };
        let min_block = i64::from(used.div_ceil(ID_BLOCK));
        self.client
            .execute(
                "SELECT setval('pilot_node_block_seq', $1, false)
                 WHERE (SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END
                        FROM pilot_node_block_seq) < $1",
                &[&min_block],
            )
            .map_err(pgerr)?;
        Ok(())
    }

    fn note(&mut self, e: postgres::Error) -> StoreError {
        if e.is_closed() || e.as_db_error().is_none() {
            self.broken = true;
        } else if let Some(db) = e.as_db_error() {
            // Admin shutdown, crash recovery, cannot connect now.
            let c = db.code().code();
            if c.starts_with("57P") || c.starts_with("08") {
                self.broken = true;
            }
        }
        pgerr(e)
    }

    fn try_apply(&mut self, sets: &[ChangeSet]) -> Result<Committed, postgres::Error> {
        // The last write of each key wins within the batch; keys sorted.
        let mut replace_all = false;
        let mut last: std::collections::BTreeMap<&[u8], Option<&[u8]>> =
            std::collections::BTreeMap::new();
        for set in sets {
            if set.replace_all {
                replace_all = true;
                last.clear();
            }
            for (k, v) in &set.writes {
                last.insert(k.as_slice(), v.as_deref());
            }
        }
        let keys: Vec<&[u8]> = last.keys().copied().collect();
        let values: Vec<Option<&[u8]>> = last.values().copied().collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.commit_once(replace_all, &keys, &values) {
                Err(e)
                    if attempt < COMMIT_ATTEMPTS
                        && e.code().is_some_and(|c| {
                            *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                                || *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                        }) =>
                {
                    tracing::debug!(error = %e, attempt, "commit retried");
                }
                other => return other,
            }
        }
    }

    /// One attempt of a commit: the rows upserted in key order (no two
    /// commits wait on each other in a cycle), each `rev` above the row's
    /// previous one, and a notification, in one prepared statement that
    /// is its own transaction (one round trip); an import's deletions
    /// first make it a two-statement transaction.
    fn commit_once(
        &mut self,
        replace_all: bool,
        keys: &[&[u8]],
        values: &[Option<&[u8]>],
    ) -> Result<Committed, postgres::Error> {
        let origin = self.origin;
        let upsert = match &self.upsert {
            Some(st) => st.clone(),
            None => {
                let st = self.client.prepare(&UPSERT)?;
                self.upsert = Some(st.clone());
                st
            }
        };
        let rows = if replace_all {
            let mut tx = self.client.transaction()?;
            tx.execute(
                &format!(
                    "UPDATE pilot_records SET value = NULL,
                     rev = GREATEST(nextval('pilot_rev_seq'), rev + 1), origin = $1,
                     txid = {TXID}, changed = now()
                     WHERE value IS NOT NULL"
                ),
                &[&origin],
            )?;
            let rows = tx.query(&upsert, &[&keys, &values, &origin])?;
            tx.commit()?;
            rows
        } else {
            self.client.query(&upsert, &[&keys, &values, &origin])?
        };
        let mut done = Committed::default();
        for row in rows {
            let rev: i64 = row.get(1);
            let txid: i64 = row.get(2);
            done.txn = txid as u64;
            done.keys.push((row.get(0), rev as u64));
        }
        Ok(done)
    }
}

impl Store for PgStore {
    fn load(&mut self, now: UnixTime) -> Result<(State, u64), StoreError> {
        let result = (|| {
            let mut tx = self
                .client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let rev: i64 = tx.query_one(&format!("SELECT {HORIZON}"), &[])?.get(0);
            let mut loader = Loader::new(now);
            let mut bad = None;
            let mut it = tx.query_raw(
                "SELECT key, value FROM pilot_records WHERE value IS NOT NULL ORDER BY key",
                std::iter::empty::<i32>(),
            )?;
            while let Some(row) = it.next()? {
                let k: &[u8] = row.get(0);
                let v: &[u8] = row.get(1);
                if let Err(e) = loader.add(k, v) {
                    bad = Some(e);
                    break;
                }
            }
            drop(it);
            tx.commit()?;
            Ok((loader, rev, bad))
        })();
        let (loader, rev, bad) = result.map_err(|e| self.note(e))?;
        if let Some(e) = bad {
            return Err(e.into());
        }
        let n = loader.records();
        let state = loader.finish();
        self.loaded_horizon = rev;
        self.advance_blocks(&state)?;
        Ok((state, n))
    }

    fn apply(&mut self, sets: &[ChangeSet]) -> Result<u64, StoreError> {
        self.apply_committed(sets).map(|c| c.txn)
    }

    fn apply_committed(&mut self, sets: &[ChangeSet]) -> Result<Committed, StoreError> {
        if sets.iter().all(ChangeSet::is_empty) {
            return Ok(Committed::default());
        }
        self.try_apply(sets).map_err(|e| self.note(e))
    }

    fn import(&mut self, json: &[u8], now: UnixTime) -> Result<State, StoreError> {
        let (state, _report) =
            pilot_proto::registry::snapshot::Snapshot::from_json(json)?.into_state(now);
        self.apply(&[ChangeSet::full(&state)?])?;
        self.advance_blocks(&state)?;
        Ok(state)
    }

    fn lease_node_ids(&mut self) -> Result<Option<(u32, u32)>, StoreError> {
        let block: i64 = self
            .client
            .query_one("SELECT nextval('pilot_node_block_seq')", &[])
            .map_err(|e| self.note(e))?
            .get(0);
        let start = u64::try_from(block).unwrap_or(u64::MAX) * u64::from(ID_BLOCK);
        let end = start + u64::from(ID_BLOCK);
        match (u32::try_from(start), u32::try_from(end)) {
            (Ok(s), Ok(e)) => Ok(Some((s.max(1), e))),
            (Ok(s), Err(_)) => Ok(Some((s.max(1), u32::MAX))),
            _ => Ok(Some((0, 0))),
        }
    }

    fn recoverable(&self) -> bool {
        self.broken || self.client.is_closed()
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        self.client = Client::connect(&self.url, NoTls).map_err(pgerr)?;
        self.upsert = None;
        self.broken = false;
        Ok(())
    }

    fn start_follower(
        &mut self,
        sink: FollowSink,
    ) -> Result<Option<std::thread::JoinHandle<()>>, StoreError> {
        let url = self.url.clone();
        let origin = self.origin;
        let from = self.loaded_horizon;
        let t = std::thread::Builder::new()
            .name("rendezvous-follow".into())
            .spawn(move || follow(url, origin, from, sink))
            .map_err(|e| StoreError::Db(format!("follower thread: {e}")))?;
        Ok(Some(t))
    }
}

/// The follower loop: reconnects until stopped.
fn follow(url: String, origin: i64, mut rev: i64, sink: FollowSink) {
    let mut first = true;
    while !sink.stop.load(Ordering::SeqCst) {
        match Client::connect(&url, NoTls) {
            Ok(client) => {
                if !first {
                    // Commits may have been missed while disconnected.
                    if sink.tx.send(FollowEvent::Resync).is_err() {
                        return;
                    }
                    let _ = sink.waker.wake();
                }
                first = false;
                if let Err(e) = follow_on(client, origin, &mut rev, &sink) {
                    tracing::warn!(error = %pgerr(e), "store follower lost its connection");
                }
                sink.reaper.store(false, Ordering::SeqCst);
                let _ = sink.waker.wake();
            }
            Err(e) => tracing::debug!(error = %pgerr(e), "store follower cannot connect"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn follow_on(
    mut client: Client,
    origin: i64,
    rev: &mut i64,
    sink: &FollowSink,
) -> Result<(), postgres::Error> {
    client.batch_execute("LISTEN pilot_records")?;
    let mut reaper = false;
    let mut last_sweep = std::time::Instant::now();
    while !sink.stop.load(Ordering::SeqCst) {
        if !reaper {
            reaper = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&REAPER_LOCK])?
                .get(0);
            if reaper {
                tracing::info!("this frontend is the reaper");
                sink.reaper.store(true, Ordering::SeqCst);
                let _ = sink.waker.wake();
            }
        }
        if reaper && last_sweep.elapsed() >= Duration::from_secs(60) {
            last_sweep = std::time::Instant::now();
            let ttl = TOMBSTONE_TTL.as_secs() as f64;
            client.execute(
                "DELETE FROM pilot_records WHERE value IS NULL
                 AND changed < now() - make_interval(secs => $1)",
                &[&ttl],
            )?;
        }
        // Everything written by transactions between the last horizon and
        // this snapshot's, in pages ordered by (txid, key), all in one
        // snapshot (one commit may write more rows than a page).
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let horizon: i64 = tx.query_one(&format!("SELECT {HORIZON}"), &[])?.get(0);
        let mut after: (i64, Option<Vec<u8>>) = (*rev, None);
        let mut out: Vec<RemoteRow> = Vec::new();
        loop {
            // Our own rows are left in the database (every frontend
            // would otherwise receive every row; the pages stay in
            // (txid, key) order, so paging is unchanged).
            let rows = tx.query(
                "SELECT key, value, rev, txid FROM pilot_records
                 WHERE txid < $4
                   AND (txid > $1 OR (txid = $1 AND ($2::bytea IS NULL OR key > $2)))
                   AND origin <> $5
                 ORDER BY txid, key LIMIT $3",
                &[&after.0, &after.1, &FOLLOW_BATCH, &horizon, &origin],
            )?;
            let n = rows.len();
            for row in rows {
                let t: i64 = row.get(3);
                after = (t, Some(row.get(0)));
                let r: i64 = row.get(2);
                out.push((row.get(0), row.get(1), r as u64));
            }
            if n < FOLLOW_BATCH as usize {
                break;
            }
        }
        tx.commit()?;
        if horizon > *rev {
            *rev = horizon;
            let ev = FollowEvent::Rows {
                rows: out,
                horizon: horizon as u64,
            };
            if sink.tx.send(ev).is_err() {
                return Ok(());
            }
            let _ = sink.waker.wake();
        }
        // Wait for a notification (or the poll interval); drain the rest.
        let mut notes = client.notifications();
        let woke = notes.timeout_iter(FOLLOW_POLL).next()?.is_some();
        if woke {
            let mut more = notes.iter();
            while more.next()?.is_some() {}
        }
    }
    Ok(())
}
