//! Table-driven tests of network management: every operation and role
//! rule, including the refusals (`spec/registry.md` §3.15.1–§3.15.3).

use super::*;
use crate::registry::policy::Role;

/// Owner A (seed 1), admin B (2), members C (3) and D (4), outsider E (5)
/// in invite network `net`.
struct World {
    h: H,
    net: u16,
}

const A: u32 = 1;
const B: u32 = 2;
const C: u32 = 3;
const D: u32 = 4;
const E: u32 = 5;

fn world() -> World {
    let mut h = H::current();
    for seed in 1..=5u8 {
        assert_eq!(h.register(seed), u32::from(seed));
    }
    let net = create(&mut h, A, "crew", "invite", "");
    for (who, seed) in [(B, 2u8), (C, 3), (D, 4)] {
        h.ok(invite_req(A, 1, net, who));
        h.ok(Request::RespondInvite(RespondInvite {
            node_id: who,
            network_id: net,
            accept: true,
            signature: sig(seed, &format!("respond_invite:{who}:{net}")),
            sig_ts: None,
        }));
    }
    h.ok(action("promote_member", A, net, B));
    World { h, net }
}

fn seed_of(node: u32) -> u8 {
    node as u8
}

fn invite_req(from: u32, seed: u8, net: u16, to: u32) -> Request {
    Request::InviteToNetwork(InviteToNetwork {
        network_id: net,
        inviter_id: from,
        target_node_id: to,
        signature: sig(seed, &format!("invite:{from}:{net}:{to}")),
        sig_ts: None,
    })
}

fn action(op: &str, actor: u32, net: u16, target: u32) -> Request {
    let a = MemberAction {
        node_id: actor,
        network_id: net,
        target_node_id: target,
        admin_token: String::new(),
        signature: sig(seed_of(actor), &format!("{op}:{actor}:{net}:{target}")),
        sig_ts: None,
    };
    match op {
        "kick_member" => Request::KickMember(a),
        "promote_member" => Request::PromoteMember(a),
        "demote_member" => Request::DemoteMember(a),
        "transfer_ownership" => Request::TransferOwnership(a),
        _ => unreachable!("{op}"),
    }
}

fn role(h: &H, net: u16, node: u32) -> Option<Role> {
    let n = &h.reg.state().networks[&net];
    n.members.contains(&node).then(|| n.role(node))
}

#[test]
fn member_actions_table() {
    use Role::*;
    // (operation, actor, target, expected error substring or None,
    //  expected roles of A..D afterwards; None = not a member)
    type Roles = [Option<Role>; 4];
    let before: Roles = [Some(Owner), Some(Admin), Some(Member), Some(Member)];
    let rows: &[(&str, u32, u32, Option<&str>, Roles)] = &[
        // kick
        (
            "kick_member",
            A,
            C,
            None,
            [Some(Owner), Some(Admin), None, Some(Member)],
        ),
        (
            "kick_member",
            A,
            B,
            None,
            [Some(Owner), None, Some(Member), Some(Member)],
        ),
        (
            "kick_member",
            B,
            C,
            None,
            [Some(Owner), Some(Admin), None, Some(Member)],
        ),
        (
            "kick_member",
            B,
            A,
            Some("cannot kick the network owner"),
            before,
        ),
        ("kick_member", A, A, Some("cannot kick yourself"), before),
        (
            "kick_member",
            C,
            D,
            Some("permission denied: kick_member requires role owner or admin"),
            before,
        ),
        (
            "kick_member",
            E,
            C,
            Some("is not a member of network"),
            before,
        ),
        ("kick_member", A, E, Some("node 5 is not a member"), before),
        // promote
        (
            "promote_member",
            A,
            C,
            None,
            [Some(Owner), Some(Admin), Some(Admin), Some(Member)],
        ),
        ("promote_member", A, B, Some("already an admin"), before),
        (
            "promote_member",
            B,
            C,
            Some("requires role owner in network 1 (node 2 is admin)"),
            before,
        ),
        ("promote_member", C, D, Some("(node 3 is member)"), before),
        (
            "promote_member",
            A,
            A,
            Some("cannot promote the network owner"),
            before,
        ),
        // demote
        (
            "demote_member",
            A,
            B,
            None,
            [Some(Owner), Some(Member), Some(Member), Some(Member)],
        ),
        ("demote_member", A, C, Some("not an admin"), before),
        ("demote_member", B, B, Some("requires role owner"), before),
        (
            "demote_member",
            A,
            A,
            Some("cannot demote the network owner"),
            before,
        ),
        // transfer
        (
            "transfer_ownership",
            A,
            C,
            None,
            [Some(Admin), Some(Admin), Some(Owner), Some(Member)],
        ),
        (
            "transfer_ownership",
            A,
            B,
            None,
            [Some(Admin), Some(Owner), Some(Member), Some(Member)],
        ),
        (
            "transfer_ownership",
            B,
            C,
            Some("requires role owner"),
            before,
        ),
        ("transfer_ownership", A, A, Some("current owner"), before),
        ("transfer_ownership", A, E, Some("is not a member"), before),
    ];
    for (op, actor, target, want, roles) in rows {
        let mut w = world();
        let r = w.h.send(action(op, *actor, w.net, *target));
        match (want, &r.error) {
            (None, None) => {}
            (Some(text), Some(e)) => {
                let wire = e.wire_text(WireProfile::Current);
                assert!(wire.contains(text), "{op} {actor}->{target}: {wire}");
            }
            _ => panic!("{op} {actor}->{target}: {:?}", r.response),
        }
        let got: Roles = [A, B, C, D].map(|n| role(&w.h, w.net, n));
        assert_eq!(&got, roles, "{op} {actor}->{target}");
        w.h.check_replay();
    }
}

#[test]
fn bad_signature_and_backbone_refused() {
    let mut w = world();
    let mut forged = MemberAction {
        node_id: A,
        network_id: w.net,
        target_node_id: C,
        signature: sig(3, &format!("kick_member:{A}:{}:{C}", w.net)),
        ..Default::default()
    };
    assert!(matches!(
        w.h.err(Request::KickMember(forged.clone())),
        RegistryError::Signature(_)
    ));
    forged.network_id = 0;
    assert_eq!(
        w.h.err(Request::KickMember(forged.clone())),
        RegistryError::RoleRule("manage the backbone network")
    );
    forged.network_id = 77;
    forged.admin_token = "adm".into();
    assert_eq!(
        w.h.err(Request::KickMember(forged)),
        RegistryError::NetworkNotFound(77)
    );
}

#[test]
fn operator_token_overrides_roles_but_not_owner_rules() {
    let mut w = world();
    let op = |target: u32| MemberAction {
        node_id: 0,
        network_id: w.net,
        target_node_id: target,
        admin_token: "adm".into(),
        ..Default::default()
    };
    w.h.ok(Request::KickMember(op(B)));
    assert_eq!(role(&w.h, w.net, B), None);
    assert_eq!(
        w.h.err(Request::KickMember(op(A))),
        RegistryError::RoleRule("kick the network owner (transfer ownership first)")
    );
    w.h.ok(Request::TransferOwnership(op(C)));
    assert_eq!(role(&w.h, w.net, C), Some(Role::Owner));
    assert_eq!(role(&w.h, w.net, A), Some(Role::Admin));
    let mut bad = op(D);
    bad.admin_token = "wrong".into();
    // A wrong token is no token: node 0 does not exist.
    assert_eq!(
        w.h.err(Request::KickMember(bad)),
        RegistryError::NodeNotFound(0)
    );
    w.h.check_replay();
}

#[test]
fn invite_leave_and_kicked_member_rules() {
    let mut w = world();
    let net = w.net;
    // Plain members may not invite, admins may.
    assert!(
        w.h.err(invite_req(C, 3, net, E))
            .to_string()
            .contains("requires role owner or admin")
    );
    w.h.ok(invite_req(B, 2, net, E));
    // The owner cannot leave; others can.
    let leave = |node: u32| {
        Request::LeaveNetwork(LeaveNetwork {
            node_id: node,
            network_id: net,
            signature: sig(seed_of(node), &format!("leave_network:{node}:{net}")),
            ..Default::default()
        })
    };
    assert!(
        w.h.err(leave(A))
            .to_string()
            .contains("cannot leave a network you own")
    );
    w.h.ok(leave(D));
    // A kicked member loses the network, its trust through it, and its
    // role and tags; it may be invited back as a plain member.
    w.h.ok(Request::SetMemberTags(SetMemberTags {
        node_id: A,
        network_id: net,
        target_node_id: C,
        tags: vec!["gpu".into()],
        signature: sig(1, &format!("set_member_tags:{A}:{net}:{C}")),
        ..Default::default()
    }));
    assert!(w.h.reg.state().share_network(A, C));
    w.h.ok(action("kick_member", A, net, C));
    assert!(!w.h.reg.state().share_network(A, C));
    assert_eq!(w.h.reg.state().nodes[&C].networks, vec![0]);
    assert!(w.h.reg.state().networks[&net].member_tags.is_empty());
    let Response::CheckTrustOk { trusted } = w.h.ok(Request::CheckTrust(CheckTrust {
        node_id: A,
        peer_id: C,
    })) else {
        panic!()
    };
    assert!(!trusted);
    w.h.check_replay();
}

#[test]
fn rename_delete_tags_and_policy() {
    let mut w = world();
    let net = w.net;
    let rename = |actor: u32, name: &str| {
        Request::RenameNetwork(RenameNetwork {
            node_id: actor,
            network_id: net,
            name: name.into(),
            signature: sig(
                seed_of(actor),
                &format!("rename_network:{actor}:{net}:{name}"),
            ),
            ..Default::default()
        })
    };
    assert!(
        w.h.err(rename(B, "x"))
            .to_string()
            .contains("requires role owner")
    );
    create(&mut w.h, E, "taken", "", "");
    assert_eq!(
        w.h.err(rename(A, "taken")),
        RegistryError::NetworkExists("taken".into())
    );
    assert!(matches!(
        w.h.err(rename(A, "Bad Name!")),
        RegistryError::NetworkName(_)
    ));
    w.h.ok(rename(A, "crew2"));
    w.h.ok(rename(A, "crew2")); // its own name is not "taken"
    assert_eq!(w.h.reg.state().networks[&net].name, "crew2");

    // Member tags: owner/admin set, anyone reads, validated.
    let tags = |actor: u32, target: u32, t: &[&str]| {
        Request::SetMemberTags(SetMemberTags {
            node_id: actor,
            network_id: net,
            target_node_id: target,
            tags: t.iter().map(|s| s.to_string()).collect(),
            signature: sig(
                seed_of(actor),
                &format!("set_member_tags:{actor}:{net}:{target}"),
            ),
            ..Default::default()
        })
    };
    let r = w.h.ok(tags(B, D, &["#gpu", "eu"]));
    assert_eq!(
        r,
        Response::SetMemberTagsOk(MemberTagsOk {
            network_id: net,
            node_id: D,
            tags: vec!["gpu".into(), "eu".into()]
        })
    );
    assert!(w.h.err(tags(C, D, &["x"])).to_string().contains("denied"));
    assert!(matches!(
        w.h.err(tags(A, D, &["bad tag"])),
        RegistryError::Tags(_)
    ));
    assert!(matches!(
        w.h.err(tags(A, E, &["x"])),
        RegistryError::NotMember { .. }
    ));
    let Response::GetMemberTagsOk(t) = w.h.ok(Request::GetMemberTags(MemberQuery {
        network_id: net,
        target_node_id: D,
    })) else {
        panic!()
    };
    assert_eq!(t.tags, vec!["gpu", "eu"]);
    let Response::GetMemberRoleOk(r) = w.h.ok(Request::GetMemberRole(MemberQuery {
        network_id: net,
        target_node_id: B,
    })) else {
        panic!()
    };
    assert_eq!(r.role, "admin");
    let Response::ListNodesOk { nodes, policy } = w.h.ok(Request::ListNodes(ListNodes {
        network_id: net,
        admin_token: String::new(),
    })) else {
        panic!()
    };
    assert!(policy.is_none());
    let d = nodes.iter().find(|n| n.node_id == D).unwrap();
    assert_eq!(
        (d.role.as_deref(), d.member_tags.len()),
        (Some("member"), 2)
    );
    assert_eq!(nodes[0].role.as_deref(), Some("owner"));

    // Policy: owner only, validated, enforced at join time.
    let set_policy = |actor: u32, p: serde_json::Value| {
        Request::SetNetworkPolicy(SetNetworkPolicy {
            node_id: actor,
            network_id: net,
            policy: Some(p),
            signature: sig(seed_of(actor), &format!("set_network_policy:{actor}:{net}")),
            ..Default::default()
        })
    };
    assert!(
        w.h.err(set_policy(B, serde_json::json!({"version":1})))
            .to_string()
            .contains("requires role owner")
    );
    assert!(
        w.h.err(set_policy(A, serde_json::json!({"version":1,"bogus":1})))
            .wire_text(WireProfile::Current)
            .contains("unknown key \"bogus\"")
    );
    w.h.ok(set_policy(
        A,
        serde_json::json!({"version":1,"max_members":4,"member_invites":true,"allowed_ports":[1000]}),
    ));
    // 4 members: full. Even an admin's invitation is refused.
    assert_eq!(
        w.h.err(invite_req(B, 2, net, E)),
        RegistryError::MembershipLimit(4)
    );
    w.h.ok(action("kick_member", A, net, D));
    // Now plain members may invite (member_invites).
    w.h.ok(invite_req(C, 3, net, E));
    let Response::GetNetworkPolicyOk(p) = w.h.ok(Request::GetNetworkPolicy(GetNetworkPolicy {
        network_id: net,
    })) else {
        panic!()
    };
    assert_eq!(
        p.policy.unwrap()["allowed_ports"],
        serde_json::json!([1000])
    );
    let mut clear = set_policy(A, serde_json::Value::Null);
    if let Request::SetNetworkPolicy(r) = &mut clear {
        r.policy = None;
    }
    w.h.ok(clear);
    assert!(w.h.reg.state().networks[&net].policy.is_none());

    // Delete: owner only; memberships and pending invitations go with it.
    let delete = |actor: u32| {
        Request::DeleteNetwork(DeleteNetwork {
            node_id: actor,
            network_id: net,
            signature: sig(seed_of(actor), &format!("delete_network:{actor}:{net}")),
            ..Default::default()
        })
    };
    assert!(
        w.h.err(delete(B))
            .to_string()
            .contains("requires role owner")
    );
    w.h.ok(delete(A));
    assert!(!w.h.reg.state().networks.contains_key(&net));
    for n in [A, B, C] {
        assert_eq!(w.h.reg.state().nodes[&n].networks, vec![0], "node {n}");
    }
    let Response::PollInvitesOk { invites } = w.h.ok(Request::PollInvites(PollInvites {
        node_id: E,
        signature: sig(5, &format!("poll_invites:{E}")),
        sig_ts: None,
    })) else {
        panic!()
    };
    assert!(invites.is_empty());
    assert_eq!(w.h.err(delete(A)), RegistryError::NetworkNotFound(net));
    w.h.check_replay();
}

#[test]
fn management_types_unknown_in_legacy_profile() {
    let mut h = H::legacy();
    h.register(1);
    assert_eq!(
        h.err(Request::GetNetworkPolicy(GetNetworkPolicy {
            network_id: 1
        })),
        RegistryError::UnknownType("get_network_policy".into())
    );
    assert_eq!(
        h.err(action("kick_member", 1, 1, 2)),
        RegistryError::UnknownType("kick_member".into())
    );
}
