//! The nameserver (port 53) served on daemon A by `pilotctl nameserver
//! serve`, queried and written by daemon B with `pilotctl nameserver
//! query|register`, as real processes (`spec/services.md` §7).

mod pilotctl_support;

use pilotctl_support::{Net, eventually, trust};

#[test]
fn records_are_registered_and_queried_across_daemons() {
    let net = Net::new();
    let a = net.node("ns-a", &[]);
    let b = net.node("ns-b", &[]);
    trust(&a, &b);
    let store = net.dir.path().join("ns.json");
    let server = a.spawn(&[
        "nameserver",
        "serve",
        "--timeout",
        "120s",
        "--store",
        store.to_str().unwrap(),
    ]);
    // Ready once a query gets an answer from the store.
    eventually("the nameserver answers", || {
        let v = b.ctl(&["nameserver", "query", "ns-a", "A", "nobody"]);
        String::from_utf8_lossy(&v.stderr).contains("not_found")
    });
    let e = b.err(&["nameserver", "query", "ns-a", "A", "nobody"]);
    assert_eq!(e["message"], "name \"nobody\" not found");

    // A: the caller's own address is filled in.
    assert_eq!(
        b.ok(&["nameserver", "register", "ns-a", "A", "bob"])["ok"],
        true
    );
    let r = b.ok(&["nameserver", "query", "ns-a", "A", "bob"]);
    assert_eq!(r["type"], "A");
    assert_eq!(r["node_id"], b.node_id);
    // Someone else's address is refused (ownership rule).
    let other = format!("0:0000.0000.{:04X}", a.node_id);
    let e = b.err(&["nameserver", "register", "ns-a", "A", "eve", &other]);
    assert_eq!(e["code"], "invalid_argument");
    assert!(
        e["message"].as_str().unwrap().contains("not the caller's"),
        "{e}"
    );

    // S: providers of (network, port).
    let mine = r["address"].as_str().unwrap().to_owned();
    b.ok(&[
        "nameserver",
        "register",
        "ns-a",
        "S",
        "web",
        &mine,
        "0",
        "80",
    ]);
    let s = b.ok(&["nameserver", "query", "ns-a", "S", "0", "80"]);
    assert_eq!(s["providers"][0]["name"], "web");
    assert_eq!(s["providers"][0]["address"], mine);
    assert_eq!(s["providers"][0]["port"], 80);
    let s = b.ok(&["nameserver", "query", "ns-a", "S", "0", "81"]);
    assert_eq!(s["providers"].as_array().unwrap().len(), 0);
    // N, and a malformed request.
    b.ok(&["nameserver", "register", "ns-a", "N", "lab", "7"]);
    assert_eq!(
        b.ok(&["nameserver", "query", "ns-a", "N", "lab"])["network_id"],
        7
    );
    let e = b.err(&["nameserver", "query", "ns-a", "X", "lab"]);
    assert_eq!(e["message"], "unknown record type: X");

    // The store file holds what was registered.
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    assert_eq!(saved["a_records"][0]["name"], "bob");
    drop(server);
}
