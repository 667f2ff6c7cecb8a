//! The daemon's connection table: who owns each overlay connection (an
//! IPC client, a built-in service, an outgoing trust message), the IPC id
//! a client knows it by, and the set of connections each client owns.
//!
//! The three indices change only in [`ConnTable::attach_client`],
//! [`ConnTable::attach`] and [`ConnTable::detach`], so they cannot drift
//! apart; [`ConnTable::check`] states the invariant and the tests assert
//! it after every step.

use std::collections::{BTreeMap, BTreeSet};

use crate::node::ConnId;
use crate::services::handshake::RegistryOp;

use super::ClientId;

/// The top bit of the ids `info` lists for the daemon's own streams
/// (services, trust messages), so they never collide with IPC ids.
pub(crate) const SERVICE_CONN_BIT: u32 = 1 << 31;

/// The id `info` lists for a stream the daemon itself owns.
pub(crate) fn service_conn_id(cid: ConnId) -> u32 {
    SERVICE_CONN_BIT | (cid.0 as u32 & !SERVICE_CONN_BIT)
}

/// Who owns an overlay connection and what it is doing.
#[derive(Debug)]
pub(crate) enum Role {
    /// An IPC client's stream.
    Client {
        client: ClientId,
        ipc_id: u32,
        /// The client waits for `DialOk`.
        dialing: bool,
    },
    /// A built-in service of the service host.
    Host,
    /// An outgoing trust message.
    TrustOut {
        out: TrustOutbound,
        written: usize,
        connected: bool,
    },
}

/// A trust message on its way to a peer's port 444.
#[derive(Debug)]
pub(crate) struct TrustOutbound {
    /// The JSON bytes.
    pub msg: Vec<u8>,
    /// Registry relay to use when the peer cannot be dialled.
    pub fallback: Option<RegistryOp>,
    /// An IPC handshake request waiting for the outcome: client and peer.
    pub notify: Option<(ClientId, u32)>,
    /// The peer, and whether this is a revoke: a revoke not yet written
    /// when we trust or ask the peer again is obsolete and goes unsent
    /// (`spec/daemon.md` §6).
    pub to: u32,
    /// See `to`.
    pub revoke: bool,
}

/// Every overlay connection the daemon tracks, with its indices.
#[derive(Debug)]
pub(crate) struct ConnTable {
    roles: BTreeMap<ConnId, Role>,
    by_ipc: BTreeMap<u32, ConnId>,
    by_client: BTreeMap<ClientId, BTreeSet<ConnId>>,
    next_ipc: u32,
}

impl Default for ConnTable {
    fn default() -> Self {
        ConnTable {
            roles: BTreeMap::new(),
            by_ipc: BTreeMap::new(),
            by_client: BTreeMap::new(),
            next_ipc: 1,
        }
    }
}

impl ConnTable {
    /// Records `cid` as a stream of `client` and gives it an IPC id
    /// (below 2^31, never 0, unique among live connections). A `cid`
    /// already present is detached first.
    pub fn attach_client(&mut self, cid: ConnId, client: ClientId, dialing: bool) -> u32 {
        self.detach(cid);
        let ipc_id = loop {
            let id = self.next_ipc;
            self.next_ipc = (self.next_ipc.wrapping_add(1) & !SERVICE_CONN_BIT).max(1);
            if !self.by_ipc.contains_key(&id) {
                break id;
            }
        };
        self.by_ipc.insert(ipc_id, cid);
        self.by_client.entry(client).or_default().insert(cid);
        self.roles.insert(
            cid,
            Role::Client {
                client,
                ipc_id,
                dialing,
            },
        );
        ipc_id
    }

    /// Records `cid` with a role of the daemon itself (a service or a
    /// trust message). A client role goes through
    /// [`ConnTable::attach_client`] instead and is refused here.
    pub fn attach(&mut self, cid: ConnId, role: Role) -> bool {
        if matches!(role, Role::Client { .. }) {
            return false;
        }
        self.detach(cid);
        self.roles.insert(cid, role);
        true
    }

    /// Forgets `cid` in every index; returns its role.
    pub fn detach(&mut self, cid: ConnId) -> Option<Role> {
        let role = self.roles.remove(&cid)?;
        if let Role::Client { client, ipc_id, .. } = &role {
            self.by_ipc.remove(ipc_id);
            if let Some(set) = self.by_client.get_mut(client) {
                set.remove(&cid);
                if set.is_empty() {
                    self.by_client.remove(client);
                }
            }
        }
        Some(role)
    }

    /// Forgets every connection of `client`; returns them.
    pub fn detach_client(&mut self, client: ClientId) -> Vec<ConnId> {
        let ids: Vec<ConnId> = self
            .by_client
            .get(&client)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for cid in &ids {
            self.detach(*cid);
        }
        ids
    }

    /// The role of `cid`.
    pub fn get(&self, cid: ConnId) -> Option<&Role> {
        self.roles.get(&cid)
    }

    /// The role of `cid`, to update its progress (not its owner).
    pub fn get_mut(&mut self, cid: ConnId) -> Option<&mut Role> {
        self.roles.get_mut(&cid)
    }

    /// The connection a client knows as `ipc_id`.
    pub fn by_ipc(&self, ipc_id: u32) -> Option<ConnId> {
        self.by_ipc.get(&ipc_id).copied()
    }

    /// How many connections `client` owns.
    pub fn client_count(&self, client: ClientId) -> usize {
        self.by_client.get(&client).map_or(0, BTreeSet::len)
    }

    /// Every connection with its role, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Role)> {
        self.roles.iter().map(|(c, r)| (*c, r))
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.roles.len()
    }

    /// The daemon's own connection (service or trust message) `info`
    /// lists as `id`.
    pub fn own_by_listed_id(&self, id: u32) -> Option<ConnId> {
        self.roles
            .iter()
            .find(|(cid, r)| service_conn_id(**cid) == id && !matches!(r, Role::Client { .. }))
            .map(|(cid, _)| *cid)
    }

    /// The invariant of the indices: every client role is in `by_ipc`
    /// under its id and in its client's set, and nothing else is.
    #[cfg(test)]
    pub fn check(&self) {
        let mut ipc = 0usize;
        let mut owned = 0usize;
        for (cid, role) in &self.roles {
            if let Role::Client { client, ipc_id, .. } = role {
                ipc += 1;
                assert_eq!(self.by_ipc.get(ipc_id), Some(cid), "ipc index of {cid:?}");
                assert!(
                    self.by_client.get(client).is_some_and(|s| s.contains(cid)),
                    "client index of {cid:?}"
                );
                assert!(*ipc_id != 0 && *ipc_id & SERVICE_CONN_BIT == 0);
            }
        }
        for set in self.by_client.values() {
            assert!(!set.is_empty(), "empty client set kept");
            owned += set.len();
        }
        assert_eq!(self.by_ipc.len(), ipc, "stale ipc ids");
        assert_eq!(owned, ipc, "stale client entries");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust_out() -> Role {
        Role::TrustOut {
            out: TrustOutbound {
                msg: Vec::new(),
                fallback: None,
                notify: None,
                to: 0,
                revoke: false,
            },
            written: 0,
            connected: false,
        }
    }

    #[test]
    fn attach_and_detach_keep_every_index_consistent() {
        let mut t = ConnTable::default();
        let (a, b) = (ClientId(1), ClientId(2));
        let i1 = t.attach_client(ConnId(10), a, true);
        let i2 = t.attach_client(ConnId(11), a, false);
        let i3 = t.attach_client(ConnId(12), b, false);
        assert!(t.attach(ConnId(20), Role::Host));
        assert!(t.attach(ConnId(21), trust_out()));
        t.check();
        assert_eq!((t.client_count(a), t.client_count(b)), (2, 1));
        assert_ne!(i1, i2);
        assert_eq!(t.by_ipc(i3), Some(ConnId(12)));
        // A client role cannot bypass the indices.
        assert!(!t.attach(
            ConnId(30),
            Role::Client {
                client: a,
                ipc_id: 99,
                dialing: false,
            }
        ));
        t.check();
        // One detach clears every index.
        assert!(matches!(t.detach(ConnId(11)), Some(Role::Client { .. })));
        t.check();
        assert_eq!(t.by_ipc(i2), None);
        assert_eq!(t.client_count(a), 1);
        // Re-attaching a live id moves it without leaving a stale entry.
        let i4 = t.attach_client(ConnId(10), b, false);
        t.check();
        assert_eq!(t.by_ipc(i1), None);
        assert_eq!(t.by_ipc(i4), Some(ConnId(10)));
        assert_eq!((t.client_count(a), t.client_count(b)), (0, 2));
        // A client's disconnect takes all of its connections.
        let mut gone = t.detach_client(b);
        gone.sort();
        assert_eq!(gone, vec![ConnId(10), ConnId(12)]);
        t.check();
        assert_eq!(t.len(), 2, "the daemon's own streams stay");
        assert!(t.detach(ConnId(99)).is_none());
        assert_eq!(
            t.own_by_listed_id(service_conn_id(ConnId(21))),
            Some(ConnId(21))
        );
    }

    #[test]
    fn ipc_ids_wrap_below_the_service_bit_and_skip_live_ones() {
        let mut t = ConnTable {
            next_ipc: SERVICE_CONN_BIT - 1,
            ..ConnTable::default()
        };
        let c = ClientId(1);
        let last = t.attach_client(ConnId(1), c, false);
        assert_eq!(last, SERVICE_CONN_BIT - 1);
        let first = t.attach_client(ConnId(2), c, false);
        assert_eq!(first, 1, "wrapped to 1, never 0 or the service bit");
        // Id 2 is taken by a long-lived connection: the next is 3.
        t.next_ipc = 2;
        let _ = t.attach_client(ConnId(3), c, false);
        t.next_ipc = 2;
        let n = t.attach_client(ConnId(4), c, false);
        assert_eq!(n, 3);
        t.check();
    }
}
