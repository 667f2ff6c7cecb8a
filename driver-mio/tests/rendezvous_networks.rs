//! Network management through the real rendezvous, with both stores
//! (`spec/registry.md` §3.15.1–§3.15.3): roles, member tags and policy are
//! answered over TCP, survive a `kill -9` of the server, and the refusals
//! reach the client with their reasons.

mod common;

use common::{Client, Rv, sign};
use pilot_proto::registry::messages::{
    CreateNetwork, GetNetworkPolicy, InviteToNetwork, ListNodes, MemberAction, MemberQuery,
    Request, RespondInvite, Response, SetMemberTags, SetNetworkPolicy,
};

const ADM: &str = "adm";

fn action(actor: u32, seed: u32, op: &str, net: u16, target: u32) -> MemberAction {
    MemberAction {
        node_id: actor,
        network_id: net,
        target_node_id: target,
        signature: sign(seed, &format!("{op}:{actor}:{net}:{target}")),
        ..Default::default()
    }
}

fn error_text(r: Response) -> String {
    match r {
        Response::Error { error } => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn roles_tags_and_policy_through_both_stores() {
    for be in common::Backend::all() {
        eprintln!("store backend: {}", be.name());
        let store = be.store("nets");
        let mut rv = Rv::start(&store, &["--admin-token", ADM]);
        let mut c = Client::connect(rv.registry);
        let (a, b, x) = (c.register(1), c.register(2), c.register(3));
        let net = match c.call(&Request::CreateNetwork(CreateNetwork {
            node_id: a,
            name: "crew".into(),
            join_rule: "invite".into(),
            admin_token: ADM.into(),
            ..Default::default()
        })) {
            Response::CreateNetworkOk { network_id, .. } => network_id,
            other => panic!("{other:?}"),
        };
        let r = c.call(&Request::InviteToNetwork(InviteToNetwork {
            network_id: net,
            inviter_id: a,
            target_node_id: b,
            signature: sign(1, &format!("invite:{a}:{net}:{b}")),
            sig_ts: None,
        }));
        assert!(matches!(r, Response::InviteToNetworkOk { .. }), "{r:?}");
        let r = c.call(&Request::RespondInvite(RespondInvite {
            node_id: b,
            network_id: net,
            accept: true,
            signature: sign(2, &format!("respond_invite:{b}:{net}")),
            sig_ts: None,
        }));
        assert!(matches!(r, Response::RespondInviteOk { .. }), "{r:?}");
        // A member may not promote; the owner may. Reasons reach the client.
        let t = error_text(c.call(&Request::PromoteMember(action(
            b,
            2,
            "promote_member",
            net,
            b,
        ))));
        assert!(t.contains("permission denied"), "{t}");
        let t = error_text(c.call(&Request::KickMember(action(x, 3, "kick_member", net, b))));
        assert!(t.contains("is not a member"), "{t}");
        let r = c.call(&Request::PromoteMember(action(
            a,
            1,
            "promote_member",
            net,
            b,
        )));
        assert!(matches!(r, Response::PromoteMemberOk(_)), "{r:?}");
        let r = c.call(&Request::SetMemberTags(SetMemberTags {
            node_id: b,
            network_id: net,
            target_node_id: b,
            tags: vec!["gpu".into()],
            signature: sign(2, &format!("set_member_tags:{b}:{net}:{b}")),
            ..Default::default()
        }));
        assert!(matches!(r, Response::SetMemberTagsOk(_)), "{r:?}");
        let t = error_text(c.call(&Request::SetNetworkPolicy(SetNetworkPolicy {
            node_id: a,
            network_id: net,
            policy: Some(serde_json::json!({"version": 2})),
            signature: sign(1, &format!("set_network_policy:{a}:{net}")),
            ..Default::default()
        })));
        assert!(t.contains("invalid policy: version must be 1"), "{t}");
        let r = c.call(&Request::SetNetworkPolicy(SetNetworkPolicy {
            node_id: a,
            network_id: net,
            policy: Some(serde_json::json!({"version": 1, "max_members": 2})),
            signature: sign(1, &format!("set_network_policy:{a}:{net}")),
            ..Default::default()
        }));
        assert!(matches!(r, Response::SetNetworkPolicyOk(_)), "{r:?}");
        // Full: even the owner's invitation is refused.
        let t = error_text(c.call(&Request::InviteToNetwork(InviteToNetwork {
            network_id: net,
            inviter_id: a,
            target_node_id: x,
            signature: sign(1, &format!("invite:{a}:{net}:{x}")),
            sig_ts: None,
        })));
        assert!(t.contains("membership limit"), "{t}");

        // Everything survives kill -9 (written before the replies).
        rv.kill9();
        drop(rv);
        let rv = Rv::start(&store, &["--admin-token", ADM]);
        let mut c = Client::connect(rv.registry);
        let role = |c: &mut Client, n: u32| match c.call(&Request::GetMemberRole(MemberQuery {
            network_id: net,
            target_node_id: n,
        })) {
            Response::GetMemberRoleOk(r) => r.role,
            other => panic!("{other:?}"),
        };
        assert_eq!(role(&mut c, a), "owner");
        assert_eq!(role(&mut c, b), "admin");
        match c.call(&Request::ListNodes(ListNodes {
            network_id: net,
            admin_token: String::new(),
        })) {
            Response::ListNodesOk { nodes, policy } => {
                let nb = nodes.iter().find(|n| n.node_id == b).unwrap();
                assert_eq!(nb.member_tags, vec!["gpu".to_owned()]);
                assert_eq!(policy.unwrap()["max_members"], 2);
            }
            other => panic!("{other:?}"),
        }
        match c.call(&Request::GetNetworkPolicy(GetNetworkPolicy {
            network_id: net,
        })) {
            Response::GetNetworkPolicyOk(p) => assert!(p.policy.is_some()),
            other => panic!("{other:?}"),
        }
        // Kick after restart: the membership record goes.
        let r = c.call(&Request::KickMember(action(a, 1, "kick_member", net, b)));
        assert!(matches!(r, Response::KickMemberOk(_)), "{r:?}");
        let t = error_text(c.call(&Request::GetMemberRole(MemberQuery {
            network_id: net,
            target_node_id: b,
        })));
        assert!(t.contains("is not a member"), "{t}");
    }
}
