//! Lookup and resolve through the real binary follow the privacy rules.

mod common;

use pilot_proto::registry::messages::{Request, Resolve, Response, SetVisibility, TrustPair};

use common::{Client, Rv, sign};

fn resolve(c: &mut Client, requester: u32, seed: u32, target: u32) -> Response {
    c.call(&Request::Resolve(Resolve {
        node_id: target,
        requester_id: requester,
        signature: sign(seed, &format!("resolve:{requester}:{target}")),
        ..Default::default()
    }))
}

#[test]
fn private_public_and_trusted_resolution() {
    for be in common::Backend::all() {
        eprintln!("store backend: {}", be.name());
        let rv = Rv::start(&be.store("s"), &[]);
        let mut c = Client::connect(rv.registry);
        let a = c.register(1);
        let b = c.register(2);
        let x = c.register(3);

        // Lookup works for anyone; a private node hides its address there.
        let lb = c.lookup(b).unwrap();
        assert!(!lb.public);
        // Resolving a private node without trust is refused.
        assert!(matches!(resolve(&mut c, a, 1, b), Response::Error { .. }));

        // A trust pair (reported by b, signed by b) lets a resolve b…
        let r = c.call(&Request::ReportTrust(TrustPair {
            node_id: b,
            peer_id: a,
            signature: sign(2, &format!("report_trust:{b}:{a}")),
            ..Default::default()
        }));
        assert!(!matches!(r, Response::Error { .. }), "{r:?}");
        match resolve(&mut c, a, 1, b) {
            Response::ResolveOk(ok) => {
                assert_eq!(ok.node_id, b);
                assert_eq!(ok.real_addr, "127.0.0.1:4000");
            }
            other => panic!("{other:?}"),
        }
        // …but not a third node.
        assert!(matches!(resolve(&mut c, x, 3, b), Response::Error { .. }));
        // A forged signature is refused even with trust.
        assert!(matches!(resolve(&mut c, a, 3, b), Response::Error { .. }));

        // Once b goes public, anyone registered may resolve it.
        let r = c.call(&Request::SetVisibility(SetVisibility {
            node_id: b,
            public: true,
            signature: sign(2, &format!("set_visibility:{b}")),
            ..Default::default()
        }));
        assert!(!matches!(r, Response::Error { .. }), "{r:?}");
        assert!(c.lookup(b).unwrap().public);
        assert!(matches!(resolve(&mut c, x, 3, b), Response::ResolveOk(_)));
    }
}
