//! Every protocol constant of the tunnel cryptography in one place. Each
//! cites the section of `spec/crypto.md` that defines it.

use core::time::Duration;

/// Length of an X25519 public or private key. spec/crypto.md §1
pub const X25519_KEY_LEN: usize = 32;
/// Length of an Ed25519 public key or seed. spec/crypto.md §1
pub const ED25519_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature. spec/crypto.md §1
pub const ED25519_SIG_LEN: usize = 64;
/// Length of the AES-256-GCM session key. spec/crypto.md §3
pub const SESSION_KEY_LEN: usize = 32;
/// Length of the AES-GCM nonce (4-byte prefix + u64 counter), a wire fact.
pub use crate::wire::tunnel::NONCE_LEN;
/// Length of the random nonce prefix. spec/crypto.md §4.1
pub const NONCE_PREFIX_LEN: usize = 4;
/// Length of the AES-GCM tag, a wire fact.
pub use crate::wire::tunnel::TAG_LEN;

/// HKDF info string of the current derivation. spec/crypto.md §3
pub const HKDF_INFO: &[u8] = b"pilot-tunnel-v1";
/// Hash prefix of the legacy (v1.8) derivation, colon included. spec/crypto.md §3
pub const LEGACY_KDF_PREFIX: &[u8] = b"pilot-tunnel-v1:";

/// Replay-window width in counters. spec/crypto.md §5.1
pub const REPLAY_WINDOW: u64 = 256;

/// A same-key exchange this soon after an install is a duplicate. spec/crypto.md §2.4
pub const DUPLICATE_KX_DEBOUNCE: Duration = Duration::from_millis(250);
/// Silence (no decrypt) after which a same-key exchange gets a recovery
/// reply (the reference waits 6 s; 1 s lets a peer that lost its session
/// recover before a dial gives up, spec/crypto.md §2.4, §10).
pub const RECOVERY_REPLY_SILENCE: Duration = Duration::from_secs(1);
/// Minimum interval between two recovery replies to one peer. spec/crypto.md §2.4
pub const RECOVERY_REPLY_INTERVAL: Duration = Duration::from_secs(1);
/// Minimum interval between two rekey requests to one peer. spec/crypto.md §2.2
pub const REKEY_REQUEST_INTERVAL: Duration = Duration::from_secs(3);
/// Peers tracked for the rekey-request limit. spec/crypto.md §2.2
pub const REKEY_REQUEST_TRACKED: usize = 4096;

/// Interval between key-exchange retransmissions. spec/crypto.md §2.6
pub const KX_RETRANSMIT_INTERVAL: Duration = Duration::from_secs(4);
/// Retransmissions after the first attempt. spec/crypto.md §2.6
pub const KX_MAX_RETRANSMITS: u32 = 5;
/// From this attempt count on, retransmissions should travel via the relay. spec/crypto.md §2.6
pub const KX_RELAY_FROM_ATTEMPT: u32 = 2;
/// Peers retransmitted per timer pass. spec/crypto.md §2.6
pub const KX_RETRANSMIT_PER_PASS: usize = 64;
/// Cool-down after giving up on a key exchange. spec/crypto.md §2.6
pub const KX_GIVE_UP_COOLDOWN: Duration = Duration::from_secs(5);

/// Sessions above which a PILK may not create another. spec/crypto.md §7
pub const MAX_UNAUTH_SESSIONS: usize = 16_384;
/// Hard cap on installed sessions of any kind (our addition). spec/crypto.md §7
pub const MAX_SESSIONS: usize = 65_536;

/// Token-bucket capacity for PILA/PILK per source. spec/crypto.md §7
pub const KX_BUCKET_CAPACITY: u32 = 5;
/// Token-bucket refill rate, tokens per second. spec/crypto.md §7
pub const KX_BUCKET_REFILL_PER_SEC: u32 = 5;
/// Sources tracked per rate limiter. spec/crypto.md §7
pub const KX_BUCKET_TRACKED: usize = 4096;
/// Idle time after which a bucket may be pruned. spec/crypto.md §7
pub const KX_BUCKET_IDLE: Duration = Duration::from_secs(10);

/// Queued plaintexts per peer while no session is ready. spec/crypto.md §6.3
pub const PENDING_PER_PEER: usize = 64;
/// Peers with a pending queue. spec/crypto.md §6.3
pub const PENDING_PEERS: usize = 256;

/// Plaintexts kept in the salvage ring. spec/crypto.md §6.4
pub const SALVAGE_SLOTS: usize = 4;
/// Maximum age of a salvage entry. spec/crypto.md §6.4
pub const SALVAGE_MAX_AGE: Duration = Duration::from_secs(5);
