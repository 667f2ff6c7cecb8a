//! Fuzz body for the per-peer session table (`pilot_proto::crypto::session`).
//!
//! The input is turned into a sequence of operations (key exchanges with
//! right and wrong keys, valid, replayed, forged and raw PILS frames, sends,
//! timers, removals) applied to one table that uses the no-security
//! provider, so forged-but-valid frames reach every state. Arbitrary
//! datagrams also go through the wire decoder and are routed as the node
//! will route them. Besides "never
//! panics", it checks invariants: frames fit the buffer, queues stay within
//! their bounds, and an opened frame yields exactly what the peer sealed.

use super::insecure::InsecureProvider;
use arbitrary::{Arbitrary, Unstructured};
use pilot_proto::WireProfile;
use pilot_proto::crypto::envelope::{Envelope, PILS_OVERHEAD};
use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::kdf::derive_session_key;
use pilot_proto::crypto::kx::{KeyExchange, PilaAuth, challenge};
use pilot_proto::crypto::params::PENDING_PER_PEER;
use pilot_proto::crypto::session::{KxSource, SessionConfig, SessionEvent, SessionTable};
use pilot_proto::time::Instant;
use pilot_proto::wire::tunnel::Frame;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

const LOCAL: u32 = 1;
const PEERS: u32 = 5;
const KEYS: u8 = 3;

#[derive(Arbitrary, Debug)]
enum Registry {
    Unknown,
    Correct,
    Wrong,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect {
        peer: u8,
    },
    Send {
        peer: u8,
        len: u16,
    },
    Kx {
        peer: u8,
        key: u8,
        pila: bool,
        good_sig: bool,
        registry: Registry,
        relayed: bool,
        ip: u8,
    },
    Pils {
        peer: u8,
        key: u8,
        len: u8,
        forge: bool,
    },
    Skip {
        peer: u8,
        key: u8,
        n: u16,
    },
    Replay {
        slot: u8,
    },
    Raw {
        bytes: Vec<u8>,
    },
    Datagram {
        bytes: Vec<u8>,
        relayed: bool,
        known: bool,
    },
    Advance {
        ms: u16,
    },
    AdvanceLong {
        secs: u8,
    },
    Timeout,
    Remove {
        peer: u8,
    },
    RestartAttempts {
        peer: u8,
    },
}

struct Peer {
    id: Identity,
    keys: Vec<TunnelKey>,
    envs: Vec<Envelope<InsecureProvider>>,
}

/// How deep one input got (for the smoke test to check reachability).
#[derive(Debug, Default, Clone, Copy)]
pub struct Reach {
    /// Sessions installed.
    pub installs: u32,
    /// PILS frames opened successfully.
    pub opened: u32,
    /// Sessions dropped (only by `remove`: failed frames never drop one).
    pub dropped: u32,
}

/// Seed inputs: empty, tiny, and long patterned inputs that steer the
/// operation decoder into different mixes of key exchanges, frames and
/// timers.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = vec![vec![], vec![0], vec![1; 7], vec![0xff; 64]];
    for b in 0u8..=255 {
        seeds.push(vec![b; 300]);
        seeds.push((0..600u32).map(|i| (i as u8).wrapping_mul(b)).collect());
    }
    seeds
}

/// Runs one fuzz input. Never panics unless an invariant is broken.
pub fn run(data: &[u8]) {
    run_reach(data);
}

/// [`run`], reporting how deep the input got.
pub fn run_reach(data: &[u8]) -> Reach {
    let mut reach = Reach::default();
    let mut u = Unstructured::new(data);
    let profile = if u.arbitrary::<bool>().unwrap_or(false) {
        WireProfile::Legacy
    } else {
        WireProfile::Current
    };
    let seed = u.arbitrary::<u64>().unwrap_or(0);
    let p = InsecureProvider;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let our_id = Identity::generate(&p, &mut rng);
    let our_tunnel = TunnelKey::generate(&p, &mut rng);
    let mut cfg = SessionConfig::new(LOCAL, profile);
    cfg.max_unauth_sessions = 3;
    cfg.pending.peers = 3;
    cfg.transmit_queue = 64;
    cfg.event_queue = 16;
    let our_pub = *our_tunnel.public();
    let mut table = SessionTable::new(p, rng, cfg, Some(&our_id), our_tunnel);

    let mut peers: Vec<Peer> = (0..PEERS)
        .map(|i| {
            let id = Identity::from_seed(&p, [i as u8 + 10; 32]);
            let keys: Vec<TunnelKey> = (0..KEYS)
                .map(|k| TunnelKey::from_secret(&p, [i as u8 * 16 + k + 1; 32]))
                .collect();
            let envs = keys
                .iter()
                .map(|k| {
                    let key =
                        derive_session_key(&p, profile, k.secret(), &our_pub).unwrap_or([0; 32]);
                    Envelope::new(&p, profile, &key, [i as u8; 4])
                })
                .collect();
            Peer { id, keys, envs }
        })
        .collect();

    let mut now = Instant::from_millis(1_000);
    let mut sent: Vec<(Vec<u8>, Vec<u8>)> = Vec::new(); // (frame, plaintext)
    let mut buf = vec![0u8; 70_000];
    let mut steps = 0;
    while !u.is_empty() && steps < 256 {
        steps += 1;
        let Ok(op) = u.arbitrary::<Op>() else { break };
        let node = |i: u8| u32::from(i) % (PEERS + 1); // includes 0 and LOCAL=1
        match op {
            Op::Connect { peer } => {
                table.connect(now, node(peer));
            }
            Op::Send { peer, len } => {
                let len = usize::from(len) % 2000;
                let pkt = vec![0x5a; len];
                let _ = table.seal(now, node(peer), &pkt, &mut buf);
                assert!(table.pending_len(node(peer)) <= PENDING_PER_PEER);
            }
            Op::Kx {
                peer,
                key,
                pila,
                good_sig,
                registry,
                relayed,
                ip,
            } => {
                let n = node(peer);
                let Some(pe) = peers.get(n as usize) else {
                    continue;
                };
                let Some(tk) = pe.keys.get(usize::from(key % KEYS)) else {
                    continue;
                };
                let auth = pila.then(|| PilaAuth {
                    ed25519: *pe.id.public(),
                    signature: if good_sig {
                        pe.id.sign(&p, &challenge(n, tk.public()))
                    } else {
                        [0; 64]
                    },
                });
                let kx = KeyExchange {
                    sender: n,
                    x25519: *tk.public(),
                    auth,
                };
                let wrong = [0xee; 32];
                let reg = match registry {
                    Registry::Unknown => None,
                    Registry::Correct => Some(pe.id.public()),
                    Registry::Wrong => Some(&wrong),
                };
                let src = if relayed {
                    KxSource::Relayed(u32::from(ip))
                } else {
                    KxSource::Direct(core::net::IpAddr::from([127, 0, 0, ip]))
                };
                let _ = table.handle_key_exchange(now, src, &kx, reg);
            }
            Op::Pils {
                peer,
                key,
                len,
                forge,
            } => {
                let n = node(peer);
                let Some(pe) = peers.get_mut(n as usize) else {
                    continue;
                };
                let Some(env) = pe.envs.get_mut(usize::from(key % KEYS)) else {
                    continue;
                };
                let pt = vec![len; usize::from(len)];
                let Ok(fl) = env.seal_to(&p, n, &pt, &mut buf) else {
                    continue;
                };
                let mut frame = buf[..fl].to_vec();
                if forge {
                    if let Some(b) = frame.last_mut() {
                        *b ^= 1;
                    }
                }
                if sent.len() >= 16 {
                    sent.remove(0);
                }
                sent.push((frame.clone(), pt.clone()));
                let before = table.session(n);
                match table.open_in_place(now, &mut frame) {
                    Ok(o) => {
                        reach.opened += 1;
                        assert!(!forge, "a forged frame opened");
                        assert_eq!(o.sender, n);
                        assert_eq!(frame.get(o.plaintext), Some(&pt[..]));
                    }
                    // spec/crypto.md §5.3: a failed frame changes nothing.
                    Err(_) => assert_eq!(
                        table.session(n),
                        before,
                        "a failed frame changed the session"
                    ),
                }
            }
            Op::Skip { peer, key, n } => {
                let Some(pe) = peers.get_mut(node(peer) as usize) else {
                    continue;
                };
                let Some(env) = pe.envs.get_mut(usize::from(key % KEYS)) else {
                    continue;
                };
                for _ in 0..(n % 600) {
                    let _ = env.seal_to(&p, 0, &[], &mut buf);
                }
            }
            Op::Replay { slot } => {
                if sent.is_empty() {
                    continue;
                }
                let idx = usize::from(slot) % sent.len();
                if let Some((frame, pt)) = sent.get(idx) {
                    let mut f = frame.clone();
                    let sender = frame
                        .get(4..8)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map(u32::from_be_bytes);
                    let before = sender.and_then(|n| table.session(n));
                    match table.open_in_place(now, &mut f) {
                        Ok(o) => assert_eq!(f.get(o.plaintext), Some(&pt[..])),
                        Err(_) => assert_eq!(
                            sender.and_then(|n| table.session(n)),
                            before,
                            "a replayed frame changed the session"
                        ),
                    }
                }
            }
            Op::Raw { mut bytes } => {
                let _ = table.open_in_place(now, &mut bytes);
            }
            Op::Datagram {
                bytes,
                relayed,
                known,
            } => {
                // Route an arbitrary datagram the way the node will.
                let mut copy = bytes.clone();
                match Frame::decode(&bytes) {
                    Ok(Frame::Pils { .. }) => {
                        let _ = table.open_in_place(now, &mut copy);
                    }
                    Ok(f) => {
                        if let Some(kx) = KeyExchange::from_frame(&f) {
                            let reg = kx.auth.map(|a| a.ed25519).filter(|_| known);
                            let src = if relayed {
                                KxSource::Relayed(kx.sender)
                            } else {
                                KxSource::Direct(core::net::IpAddr::from([127, 0, 0, 9]))
                            };
                            let _ = table.handle_key_exchange(now, src, &kx, reg.as_ref());
                        }
                    }
                    Err(_) => {}
                }
            }
            Op::Advance { ms } => now = now + core::time::Duration::from_millis(u64::from(ms)),
            Op::AdvanceLong { secs } => {
                now = now + core::time::Duration::from_secs(u64::from(secs))
            }
            Op::Timeout => table.handle_timeout(now),
            Op::Remove { peer } => {
                table.remove(node(peer));
            }
            Op::RestartAttempts { peer } => table.restart_attempts(node(peer)),
        }
        // Drain outputs and check them.
        let mut guard = 0;
        while let Some(tx) = table.poll_transmit(now, &mut buf) {
            assert!(tx.len <= buf.len());
            assert!(tx.len >= PILS_OVERHEAD);
            guard += 1;
            assert!(guard <= 64 + 1, "transmit queue exceeded its bound");
        }
        while let Some(ev) = table.poll_event() {
            match ev {
                SessionEvent::Installed { .. } => reach.installs += 1,
                SessionEvent::Dropped { .. } => reach.dropped += 1,
                _ => {}
            }
        }
        assert!(table.len() <= PEERS as usize + 1);
        if let Some(t) = table.poll_timeout() {
            assert!(t > Instant::ZERO);
        }
    }
    reach
}
