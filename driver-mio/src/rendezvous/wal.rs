//! The write-ahead log in front of the embedded store
//! (`spec/registry.md` §11.2): what makes a group commit durable is one
//! sequential write and one `fdatasync` here, not a redb transaction.
//!
//! The file (`<store>.wal`) is zero-filled to [`WAL_BYTES`] once, when it
//! is created, and then only overwritten in place, so a sync flushes data
//! blocks and no file-system metadata. Its first [`HEADER`] bytes hold a
//! magic, the current generation and a checksum; records follow, each
//! `[magic u32][generation u64][length u32][checksum u64]` plus the
//! encoded change sets. Replay reads records of the header's generation
//! until the first one that does not check out (a torn tail was never
//! acknowledged). A reset (after the records reached the redb file
//! durably) bumps the generation, so older records left behind are never
//! read again.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pilot_proto::registry::records::ChangeSet;

/// Size of the log file.
pub const WAL_BYTES: u64 = 16 << 20;
/// Bytes reserved for the header.
const HEADER: u64 = 4096;
const FILE_MAGIC: u32 = 0x7057_414c; // "pWAL"
const REC_MAGIC: u32 = 0x7052_4543; // "pREC"
const REC_HEAD: usize = 4 + 8 + 4 + 8;

/// FNV-1a, 64 bits: a stable checksum for torn-write detection.
fn checksum(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The log next to a store file.
pub struct Wal {
    file: File,
    generation: u64,
    /// Where the next record goes.
    end: u64,
}

/// Where the logs of the store at `store` live: `<store>.wal` and
/// `<store>.wal2`. One takes appends while the other's records are being
/// checkpointed into the store file (`spec/registry.md` §11.2).
pub fn wal_paths(store: &Path) -> [PathBuf; 2] {
    [".wal", ".wal2"].map(|ext| {
        let mut p = store.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    })
}

fn encode(sets: &[ChangeSet], out: &mut Vec<u8>) {
    out.extend_from_slice(&(sets.len() as u32).to_be_bytes());
    for s in sets {
        out.push(u8::from(s.replace_all));
        out.extend_from_slice(&(s.writes.len() as u32).to_be_bytes());
        for (k, v) in &s.writes {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            match v {
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.push(0),
            }
        }
    }
}

/// Decodes what [`encode`] wrote (`None`: malformed).
fn decode(mut b: &[u8]) -> Option<Vec<ChangeSet>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    fn u32_(b: &mut &[u8]) -> Option<usize> {
        take(b, 4).map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]) as usize)
    }
    let n = u32_(&mut b)?;
    let mut sets = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let replace_all = take(&mut b, 1)?[0] == 1;
        let w = u32_(&mut b)?;
        let mut writes = Vec::with_capacity(w.min(4096));
        for _ in 0..w {
            let kl = u32_(&mut b)?;
            let k = take(&mut b, kl)?.to_vec();
            let v = match take(&mut b, 1)?[0] {
                0 => None,
                _ => {
                    let vl = u32_(&mut b)?;
                    Some(take(&mut b, vl)?.to_vec())
                }
            };
            writes.push((k, v));
        }
        sets.push(ChangeSet {
            replace_all,
            writes,
        });
    }
    b.is_empty().then_some(sets)
}

impl Wal {
    /// Opens (creating and zero-filling if needed) the log at `path` and
    /// returns it with the change sets of its current generation, in
    /// order.
    pub fn open(path: &Path) -> std::io::Result<(Wal, Vec<ChangeSet>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() < WAL_BYTES {
            // Written blocks, so later syncs touch no metadata.
            let zeros = vec![0u8; 1 << 20];
            file.seek(SeekFrom::Start(0))?;
            for _ in 0..(WAL_BYTES >> 20) {
                file.write_all(&zeros)?;
            }
            file.sync_all()?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut head = [0u8; 20];
        file.read_exact_at(&mut head, 0)?;
        let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let generation = u64::from_be_bytes(head[4..12].try_into().unwrap_or_default());
        let sum = u64::from_be_bytes(head[12..20].try_into().unwrap_or_default());
        let mut wal = Wal {
            file,
            generation,
            end: HEADER,
        };
        if magic != FILE_MAGIC || sum != checksum(&[&head[..12]]) {
            // Fresh (or unreadable header: nothing was ever acknowledged
            // from a log whose header was never written).
            wal.reset()?;
            return Ok((wal, Vec::new()));
        }
        let mut sets = Vec::new();
        let mut rec = [0u8; REC_HEAD];
        while wal.end + REC_HEAD as u64 <= WAL_BYTES {
            wal.file.read_exact_at(&mut rec, wal.end)?;
            let m = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
            let g = u64::from_be_bytes(rec[4..12].try_into().unwrap_or_default());
            let len = u32::from_be_bytes([rec[12], rec[13], rec[14], rec[15]]) as u64;
            let sum = u64::from_be_bytes(rec[16..24].try_into().unwrap_or_default());
            if m != REC_MAGIC || g != generation || wal.end + REC_HEAD as u64 + len > WAL_BYTES {
                break;
            }
            let mut body = vec![0u8; len as usize];
            wal.file
                .read_exact_at(&mut body, wal.end + REC_HEAD as u64)?;
            if sum != checksum(&[&rec[..16], &body]) {
                break;
            }
            match decode(&body) {
                Some(s) => sets.extend(s),
                None => break,
            }
            wal.end += REC_HEAD as u64 + len;
        }
        Ok((wal, sets))
    }

    /// Appends `sets` as one record and syncs it. `Ok(false)`: it does
    /// not fit (checkpoint and reset first, or store it directly).
    pub fn append(&mut self, sets: &[ChangeSet]) -> std::io::Result<bool> {
        let mut rec = vec![0u8; REC_HEAD];
        encode(sets, &mut rec);
        let len = rec.len() - REC_HEAD;
        if self.end + rec.len() as u64 > WAL_BYTES || u32::try_from(len).is_err() {
            return Ok(false);
        }
        rec[0..4].copy_from_slice(&REC_MAGIC.to_be_bytes());
        rec[4..12].copy_from_slice(&self.generation.to_be_bytes());
        rec[12..16].copy_from_slice(&(len as u32).to_be_bytes());
        let sum = checksum(&[&rec[..16], &rec[REC_HEAD..]]);
        rec[16..24].copy_from_slice(&sum.to_be_bytes());
        self.file.write_all_at(&rec, self.end)?;
        self.file.sync_data()?;
        self.end += rec.len() as u64;
        Ok(true)
    }

    /// Bytes of records in the current generation.
    pub fn used(&self) -> u64 {
        self.end - HEADER
    }

    /// The current generation. Of two logs holding records, the one with
    /// the lower generation holds the older ones.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Starts a new, empty generation above both this log's and `floor`
    /// (the other log's), so this log's coming records replay after the
    /// other's.
    pub fn reset_above(&mut self, floor: u64) -> std::io::Result<()> {
        self.generation = self.generation.max(floor);
        self.reset()
    }

    /// Starts a new, empty generation (after its records reached the
    /// store durably).
    pub fn reset(&mut self) -> std::io::Result<()> {
        self.generation = self.generation.wrapping_add(1);
        let mut head = [0u8; 20];
        head[0..4].copy_from_slice(&FILE_MAGIC.to_be_bytes());
        head[4..12].copy_from_slice(&self.generation.to_be_bytes());
        let sum = checksum(&[&head[..12]]);
        head[12..20].copy_from_slice(&sum.to_be_bytes());
        self.file.write_all_at(&head, 0)?;
        self.file.sync_data()?;
        self.end = HEADER;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(i: u8) -> ChangeSet {
        ChangeSet {
            replace_all: i == 0,
            writes: vec![(vec![i, 1], Some(vec![i; 40])), (vec![i, 2], None)],
        }
    }

    #[test]
    fn records_replay_until_reset_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.redb.wal");
        {
            let (mut w, got) = Wal::open(&p).unwrap();
            assert!(got.is_empty());
            assert!(w.append(&[set(0), set(1)]).unwrap());
            assert!(w.append(&[set(2)]).unwrap());
        }
        let (mut w, got) = Wal::open(&p).unwrap();
        assert_eq!(got, vec![set(0), set(1), set(2)]);
        // A torn third record: its body half written.
        let end = w.end;
        assert!(w.append(&[set(3)]).unwrap());
        w.file.write_all_at(&[0xff; 8], w.end - 8).unwrap();
        drop(w);
        let (mut w, got) = Wal::open(&p).unwrap();
        assert_eq!(got, vec![set(0), set(1), set(2)]);
        assert_eq!(w.end, end);
        // After a reset, the old generation's records are never read.
        w.reset().unwrap();
        assert!(w.append(&[set(4)]).unwrap());
        drop(w);
        let (_, got) = Wal::open(&p).unwrap();
        assert_eq!(got, vec![set(4)]);
    }

    #[test]
    fn a_set_larger_than_the_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(&dir.path().join("w")).unwrap();
        let big = ChangeSet {
            replace_all: true,
            writes: vec![(vec![1], Some(vec![0; WAL_BYTES as usize]))],
        };
        assert!(!w.append(&[big]).unwrap());
        assert_eq!(w.used(), 0);
    }

    #[test]
    fn malformed_bodies_do_not_decode() {
        let mut b = Vec::new();
        encode(&[set(1)], &mut b);
        assert_eq!(decode(&b), Some(vec![set(1)]));
        for cut in 0..b.len() {
            assert_eq!(decode(&b[..cut]), None);
        }
    }
}
