//! The registry over TLS (`--tls-cert`, `--tls-key`): a rustls client that
//! trusts the server's certificate registers and looks up through the real
//! binary; a plaintext client gets no reply; bad key files refuse to start.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;

use pilot_proto::registry::messages::{Lookup, Request, Response};
use rustls::pki_types::ServerName;

use common::{Rv, STEP, frame, read_response, register_req};

fn call(s: &mut impl ReadWrite, req: &Request) -> std::io::Result<Response> {
    s.write_all(&frame(req))?;
    s.flush()?;
    read_response(s)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn registry_serves_tls_clients_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let rv = Rv::start(
        &dir.path().join("t.redb"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connect = || {
        let tcp = TcpStream::connect_timeout(&rv.registry, STEP).unwrap();
        tcp.set_read_timeout(Some(STEP)).unwrap();
        let conn = rustls::ClientConnection::new(
            Arc::new(cfg.clone()),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        rustls::StreamOwned::new(conn, tcp)
    };
    let mut c = connect();
    let id = match call(&mut c, &register_req(1)).unwrap() {
        Response::RegisterOk(ok) => ok.node_id,
        other => panic!("{other:?}"),
    };
    // Several requests in one TLS session, and a second session.
    for _ in 0..3 {
        assert!(matches!(
            call(&mut c, &Request::Lookup(Lookup { node_id: id })).unwrap(),
            Response::LookupOk(_)
        ));
    }
    let mut c2 = connect();
    assert!(matches!(
        call(&mut c2, &Request::Lookup(Lookup { node_id: id })).unwrap(),
        Response::LookupOk(_)
    ));

    // A plaintext request is not a TLS record: the connection is closed
    // without a reply.
    let mut plain = TcpStream::connect(rv.registry).unwrap();
    plain.set_read_timeout(Some(STEP)).unwrap();
    assert!(call(&mut plain, &register_req(2)).is_err());

    // The TLS registry still serves the first client afterwards.
    assert!(matches!(
        call(&mut c, &Request::Lookup(Lookup { node_id: id })).unwrap(),
        Response::LookupOk(_)
    ));

    // A key that does not parse refuses to start, naming the file.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pilot-rendezvous"))
        .args([
            "--registry-addr",
            "127.0.0.1:0",
            "--beacon-addr",
            "127.0.0.1:0",
        ])
        .arg("--store")
        .arg(dir.path().join("u.redb"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.pem"), "{err}");
}
