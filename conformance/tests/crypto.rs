//! Known-answer tests for the tunnel cryptography (`vectors/crypto.json`,
//! from spec/crypto.md §8): X25519, both key derivations, PILK/PILA bytes,
//! PILS frames under both profiles, the replay-window sequence and the
//! identity file. Every vector runs with each provider (`RustCrypto`,
//! `Ring`, and `Selected` in both modes), and frames sealed by one
//! provider open with the other.

use pilot_conformance::{field, load, name, unhex};
use pilot_proto::WireProfile;
use pilot_proto::crypto::envelope::{Envelope, OpenError};
use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::kdf::derive_session_key;
use pilot_proto::crypto::kx::{self, KeyExchange, KxError, PilaAuth};
use pilot_proto::crypto::provider::{CryptoProvider, Ring, RustCrypto, Selected};
use pilot_proto::crypto::replay::{ReplayWindow, Verdict};
use pilot_proto::wire::tunnel::Frame;
use serde_json::Value;

fn arr<const N: usize>(v: &Value, key: &str) -> [u8; N] {
    unhex(field(v, key))
        .try_into()
        .unwrap_or_else(|_| panic!("vector {}: {key} is not {N} bytes", name(v)))
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("vector {}: missing number {key}", name(v)))
}

fn profile(v: &Value) -> WireProfile {
    match field(v, "profile") {
        "current" => WireProfile::Current,
        "legacy" => WireProfile::Legacy,
        other => panic!("vector {}: unknown profile {other}", name(v)),
    }
}

fn of_kind(kind: &str) -> Vec<Value> {
    let all: Vec<Value> = load("crypto.json")
        .into_iter()
        .filter(|v| v.get("kind").and_then(Value::as_str) == Some(kind))
        .collect();
    assert!(!all.is_empty(), "no vectors of kind {kind}");
    all
}

fn x25519_with<P: CryptoProvider>(p: P) {
    for v in of_kind("x25519") {
        let a = TunnelKey::from_secret(&p, arr(&v, "a_priv"));
        let b = TunnelKey::from_secret(&p, arr(&v, "b_priv"));
        assert_eq!(a.public(), &arr::<32>(&v, "a_pub"), "{}", name(&v));
        assert_eq!(b.public(), &arr::<32>(&v, "b_pub"), "{}", name(&v));
        let shared = arr::<32>(&v, "shared");
        assert_eq!(p.x25519_dh(a.secret(), b.public()), shared);
        assert_eq!(p.x25519_dh(b.secret(), a.public()), shared);
    }
}

fn derivation_with<P: CryptoProvider>(p: P) {
    for v in of_kind("kdf") {
        let key = arr::<32>(&v, "key");
        let a = arr::<32>(&v, "a_priv");
        let b_pub = arr::<32>(&v, "b_pub");
        assert_eq!(
            derive_session_key(&p, profile(&v), &a, &b_pub).unwrap(),
            key,
            "{}",
            name(&v)
        );
        if let Some(prk) = v.get("prk").and_then(Value::as_str) {
            // The intermediate value, checked with the hkdf crate directly.
            let (got_prk, hk) = hkdf::Hkdf::<sha2::Sha256>::extract(None, &arr::<32>(&v, "shared"));
            assert_eq!(got_prk.as_slice(), unhex(prk).as_slice());
            let mut okm = [0u8; 32];
            hk.expand(b"pilot-tunnel-v1", &mut okm).unwrap();
            assert_eq!(okm, key);
        }
    }
}

fn pilk_frames_with<P: CryptoProvider>(p: P) {
    for v in of_kind("pilk") {
        let t = TunnelKey::from_secret(&p, arr(&v, "x25519_priv"));
        let mut buf = [0u8; 64];
        let node = num(&v, "node") as u32;
        let n = kx::build_pilk(node, &t, &mut buf).unwrap();
        let frame = unhex(field(&v, "frame"));
        assert_eq!(&buf[..n], frame.as_slice(), "{}", name(&v));
        // The wire decoder yields the same key exchange.
        let kx = KeyExchange::from_frame(&Frame::decode(&frame).unwrap()).unwrap();
        let expected = KeyExchange {
            sender: node,
            x25519: *t.public(),
            auth: None,
        };
        assert_eq!(kx, expected);
    }
}

fn pila_frames_with<P: CryptoProvider>(p: P) {
    for v in of_kind("pila") {
        let node = num(&v, "node") as u32;
        let t = TunnelKey::from_secret(&p, arr(&v, "x25519_priv"));
        let id = Identity::from_seed(&p, arr(&v, "ed25519_seed"));
        assert_eq!(id.public(), &arr::<32>(&v, "ed25519_pub"));
        assert_eq!(
            kx::challenge(node, t.public()).as_slice(),
            unhex(field(&v, "signed_message")).as_slice()
        );
        let mut buf = [0u8; 200];
        let n = kx::build_pila(&p, node, &t, &id, &mut buf).unwrap();
        let frame = unhex(field(&v, "frame"));
        assert_eq!(&buf[..n], frame.as_slice(), "{}", name(&v));
        let auth = PilaAuth {
            ed25519: *id.public(),
            signature: arr(&v, "signature"),
        };
        // The wire decoder yields the same key exchange.
        let kx = KeyExchange::from_frame(&Frame::decode(&frame).unwrap()).unwrap();
        assert_eq!(kx.auth, Some(auth));
        assert_eq!((kx.sender, kx.x25519), (node, *t.public()));
        assert_eq!(
            kx::verify_pila(&p, node, t.public(), &auth, Some(id.public())),
            Ok(())
        );
        assert_eq!(
            kx::verify_pila(&p, node + 1, t.public(), &auth, Some(id.public())),
            Err(KxError::BadSignature)
        );
    }
}

fn pils_frames_seal_and_open_with<P: CryptoProvider>(p: P) {
    for v in of_kind("pils") {
        let key = arr::<32>(&v, "key");
        let prof = profile(&v);
        let sender = num(&v, "sender") as u32;
        let counter = num(&v, "counter");
        let pt = unhex(field(&v, "plaintext"));
        let frame = unhex(field(&v, "frame"));
        // Seal: burn counters up to the vector's one, then compare bytes.
        let mut tx = Envelope::new(&p, prof, &key, arr(&v, "prefix"));
        let mut buf = vec![0u8; pt.len() + 36];
        for _ in 1..counter {
            tx.seal_to(&p, sender, &pt, &mut buf).unwrap();
        }
        let n = tx.seal_to(&p, sender, &pt, &mut buf).unwrap();
        assert_eq!(&buf[..n], frame.as_slice(), "{}", name(&v));
        // The wire decoder sees the same header fields.
        match Frame::decode(&frame).unwrap() {
            Frame::Pils {
                sender: s,
                nonce,
                sealed,
            } => {
                assert_eq!(s, sender);
                assert_eq!(&nonce[..4], &arr::<4>(&v, "prefix"));
                assert_eq!(u64::from_be_bytes(nonce[4..].try_into().unwrap()), counter);
                assert_eq!(sealed.len(), pt.len() + 16);
            }
            other => panic!("{}: decoded as {other:?}", name(&v)),
        }
        // Open in place on a fresh receiver.
        let mut rx = Envelope::new(&p, prof, &key, [0; 4]);
        let mut f = frame.clone();
        let (h, r) = rx
            .open_in_place(&p, &mut f)
            .unwrap_or_else(|e| panic!("{}: {e}", name(&v)));
        assert_eq!((h.sender, h.counter()), (sender, counter));
        assert_eq!(&f[r], pt.as_slice());
        // The same frame under the other profile's rules never opens.
        let other = match prof {
            WireProfile::Current => WireProfile::Legacy,
            WireProfile::Legacy => WireProfile::Current,
        };
        let mut rx = Envelope::new(&p, other, &key, [0; 4]);
        let mut f = frame.clone();
        assert_eq!(rx.open_in_place(&p, &mut f), Err(OpenError::Auth));
    }
}

fn pils_frames_that_must_not_open_with<P: CryptoProvider>(p: P, untouched_on_failure: bool) {
    for v in of_kind("pils_reject") {
        let mut rx = Envelope::new(&p, profile(&v), &arr(&v, "key"), [0; 4]);
        let mut f = unhex(field(&v, "frame"));
        let before = f.clone();
        assert_eq!(
            rx.open_in_place(&p, &mut f),
            Err(OpenError::Auth),
            "{}",
            name(&v)
        );
        if untouched_on_failure {
            assert_eq!(f, before, "a failed open leaves the buffer untouched");
        }
        assert_eq!(rx.window().max(), 0);
    }
}

#[test]
fn replay_sequence() {
    for v in of_kind("replay") {
        let list =
            |k: &str| -> Vec<Value> { v.get(k).and_then(Value::as_array).cloned().expect(k) };
        let mut w = ReplayWindow::new();
        let (cs, rs, ms) = (list("counters"), list("results"), list("max_after"));
        assert_eq!(cs.len(), rs.len());
        for ((c, r), m) in cs.iter().zip(&rs).zip(&ms) {
            let c = c.as_u64().unwrap();
            let expect = match r.as_str().unwrap() {
                "accept" => Verdict::Accept,
                "replay" => Verdict::Replay,
                "outside" => Verdict::Outside,
                other => panic!("bad result {other}"),
            };
            assert_eq!(w.record(c), expect, "counter {c}");
            assert_eq!(w.max(), m.as_u64().unwrap());
        }
    }
}

fn identity_file_with<P: CryptoProvider>(p: P) {
    for v in of_kind("identity_file") {
        let text = field(&v, "file");
        let id = Identity::decode_file(&p, text.as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", name(&v)));
        assert_eq!(id.seed(), &arr::<32>(&v, "ed25519_seed"));
        let mut buf = [0u8; 512];
        let n = id.encode_file(&mut buf).unwrap();
        assert_eq!(&buf[..n], text.as_bytes());
    }
}

/// Runs a vector test with every provider.
#[test]
fn x25519() {
    x25519_with(RustCrypto);
    x25519_with(Ring);
    x25519_with(Selected::RustCrypto);
    x25519_with(Selected::Ring);
}

#[test]
fn derivation() {
    derivation_with(RustCrypto);
    derivation_with(Ring);
    derivation_with(Selected::RustCrypto);
    derivation_with(Selected::Ring);
}

#[test]
fn pilk_frames() {
    pilk_frames_with(RustCrypto);
    pilk_frames_with(Ring);
    pilk_frames_with(Selected::RustCrypto);
    pilk_frames_with(Selected::Ring);
}

#[test]
fn pila_frames() {
    pila_frames_with(RustCrypto);
    pila_frames_with(Ring);
    pila_frames_with(Selected::RustCrypto);
    pila_frames_with(Selected::Ring);
}

#[test]
fn pils_frames_seal_and_open() {
    pils_frames_seal_and_open_with(RustCrypto);
    pils_frames_seal_and_open_with(Ring);
    pils_frames_seal_and_open_with(Selected::RustCrypto);
    pils_frames_seal_and_open_with(Selected::Ring);
}

#[test]
fn pils_frames_that_must_not_open() {
    // RustCrypto's aes-gcm leaves a rejected buffer as it was; ring zeroes it.
    pils_frames_that_must_not_open_with(RustCrypto, true);
    pils_frames_that_must_not_open_with(Ring, false);
    pils_frames_that_must_not_open_with(Selected::RustCrypto, true);
    pils_frames_that_must_not_open_with(Selected::Ring, false);
}

#[test]
fn identity_file() {
    identity_file_with(RustCrypto);
    identity_file_with(Ring);
    identity_file_with(Selected::RustCrypto);
    identity_file_with(Selected::Ring);
}

/// Seals with `tx` and opens with `rx`, for every vector's key under both
/// profiles and a spread of sizes (one segment, a full 4096-byte one,
/// empty), and checks the frames are byte-identical across providers.
fn interop<A: CryptoProvider, B: CryptoProvider>(a: A, b: B) {
    for prof in [WireProfile::Current, WireProfile::Legacy] {
        for len in [0usize, 1, 15, 16, 17, 1152, 4096] {
            let key = [0x42u8; 32];
            let pt: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut tx_a = Envelope::new(&a, prof, &key, [1, 2, 3, 4]);
            let mut tx_b = Envelope::new(&b, prof, &key, [1, 2, 3, 4]);
            let mut fa = vec![0u8; len + 36];
            let mut fb = vec![0u8; len + 36];
            for _ in 0..3 {
                let na = tx_a.seal_to(&a, 7, &pt, &mut fa).unwrap();
                let nb = tx_b.seal_to(&b, 7, &pt, &mut fb).unwrap();
                assert_eq!(fa[..na], fb[..nb], "{prof:?} {len}: frames differ");
                // A's frame opens with B's receiver and the other way round.
                let mut rx_b = Envelope::new(&b, prof, &key, [0; 4]);
                let mut f = fa[..na].to_vec();
                let (_, r) = rx_b.open_in_place(&b, &mut f).unwrap();
                assert_eq!(&f[r], pt.as_slice());
                let mut rx_a = Envelope::new(&a, prof, &key, [0; 4]);
                let mut f = fb[..nb].to_vec();
                let (_, r) = rx_a.open_in_place(&a, &mut f).unwrap();
                assert_eq!(&f[r], pt.as_slice());
                // A flipped tag bit is refused by both.
                let mut f = fa[..na].to_vec();
                if let Some(last) = f.last_mut() {
                    *last ^= 1;
                }
                let mut g = f.clone();
                assert_eq!(rx_b.open_in_place(&b, &mut f), Err(OpenError::Auth));
                assert_eq!(rx_a.open_in_place(&a, &mut g), Err(OpenError::Auth));
            }
        }
    }
}

#[test]
fn providers_interoperate_frame_for_frame() {
    interop(RustCrypto, Ring);
    interop(Ring, RustCrypto);
    interop(Selected::RustCrypto, Selected::Ring);
    interop(Selected::Ring, RustCrypto);
}
