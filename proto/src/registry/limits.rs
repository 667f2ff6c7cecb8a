//! Every protocol constant and bound of the registry, in one place. Each one
//! cites the section of `spec/registry.md` that defines it.

use core::time::Duration;

/// Largest JSON frame the server accepts (v1.8 value; `spec/registry.md` §1).
pub const MAX_FRAME_LEN: usize = 1_048_576;
/// Largest request a client sends (`spec/registry.md` §1).
pub const MAX_CLIENT_REQUEST_LEN: usize = 65_536;
/// Length of the frame prefix (`spec/registry.md` §1).
pub const FRAME_PREFIX_LEN: usize = 4;
/// Idle connection timeout the driver applies (`spec/registry.md` §1).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Maximum hostname / network-name length (`spec/registry.md` §6).
pub const MAX_HOSTNAME_LEN: usize = 63;
/// Maximum tag length (`spec/registry.md` §6).
pub const MAX_TAG_LEN: usize = 32;
/// Maximum tags per node at the registry (`spec/registry.md` §6).
pub const MAX_TAGS: usize = 10;
/// Hostnames nobody may take (`spec/registry.md` §6).
pub const RESERVED_HOSTNAMES: [&str; 3] = ["localhost", "backbone", "broadcast"];
/// Name of network 0 (`spec/registry.md` §6).
pub const BACKBONE_NAME: &str = "backbone";
/// Handshake requests a node's inbox holds (`spec/registry.md` §6).
pub const MAX_INBOX: usize = 100;
/// Handshake responses a node's response inbox holds (our bound,
/// `spec/registry.md` §6).
pub const MAX_RESPONSE_INBOX: usize = 100;
/// Largest handshake justification in bytes (`spec/registry.md` §6).
pub const MAX_JUSTIFICATION: usize = 1024;
/// Largest `lan_addrs` list kept per node (our bound, `spec/registry.md` §6).
pub const MAX_LAN_ADDRS: usize = 8;
/// Largest single address string kept (our bound, `spec/registry.md` §6).
pub const MAX_ADDR_LEN: usize = 128;
/// Largest `owner` string kept (our bound, `spec/registry.md` §6).
pub const MAX_OWNER_LEN: usize = 256;
/// Largest network join token (our bound, `spec/registry.md` §6).
pub const MAX_TOKEN_LEN: usize = 256;
/// Non-backbone networks one node may belong to (our bound,
/// `spec/registry.md` §6).
pub const MAX_NETWORKS_PER_NODE: usize = 256;
/// Default maximum of live nodes (`spec/registry.md` §6).
pub const DEFAULT_MAX_NODES: usize = 1_000_000;
/// Default maximum of remembered keys and owners (our bound,
/// `spec/registry.md` §6).
pub const DEFAULT_MAX_IDENTITIES: usize = 2_000_000;
/// Default maximum of trust pairs (our bound, `spec/registry.md` §6).
pub const DEFAULT_MAX_TRUST_PAIRS: usize = 4_000_000;
/// Maximum beacons remembered (our bound, `spec/registry.md` §6).
pub const MAX_BEACONS: usize = 1024;
/// Beacon registrations expire after this (`spec/registry.md` §7).
pub const BEACON_TTL: Duration = Duration::from_secs(60);
/// Maximum rate-limit buckets kept (our bound, `spec/registry.md` §8).
pub const MAX_RATE_BUCKETS: usize = 65_536;

/// Reap tick of v1.8 (`spec/registry.md` §7).
pub const REAP_INTERVAL: Duration = Duration::from_secs(60);
/// Stale threshold of v1.8 (`spec/registry.md` §7).
pub const STALE_THRESHOLD: Duration = Duration::from_secs(180);
/// At most this many nodes are reaped per tick (`spec/registry.md` §7).
pub const MAX_REAP_PER_TICK: usize = 10_000;

/// Registration bucket: capacity and refill per window (`spec/registry.md` §8).
pub const REGISTER_RATE: u32 = 10;
/// `resolve` bucket per IP (`spec/registry.md` §8).
pub const RESOLVE_RATE: u32 = 100;
/// Query bucket (`lookup`, `resolve_hostname`, `list_nodes`) per IP
/// (`spec/registry.md` §8).
pub const QUERY_RATE: u32 = 500;
/// Refill window of every bucket (`spec/registry.md` §8).
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Default freshness window of strong-form signatures (`spec/registry.md` §5).
pub const SIG_FRESHNESS: Duration = Duration::from_secs(300);

/// Client: reconnect back-off start (`spec/registry.md` §10).
pub const CLIENT_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Client: reconnect back-off cap (`spec/registry.md` §10).
pub const CLIENT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Client: how long a dial may take (`spec/registry.md` §10).
pub const CLIENT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Client: how long to wait for a response (`spec/registry.md` §10).
pub const CLIENT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Client: default heartbeat period (`spec/registry.md` §7).
pub const CLIENT_HEARTBEAT: Duration = Duration::from_secs(30);
/// Client: consecutive heartbeat failures that trigger re-registration
/// (`spec/registry.md` §7).
pub const CLIENT_HEARTBEAT_FAILURES: u32 = 3;
/// Client: bound of queued requests (`spec/registry.md` §10).
pub const CLIENT_MAX_QUEUE: usize = 64;
