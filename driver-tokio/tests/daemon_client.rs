//! The daemon client against a stand-in IPC server.
//!
//! The stand-in speaks the real IPC codec (`pilot_proto::wire::ipc`) on a
//! Unix socket in a temp dir and carries out each request on an embedded
//! node, so the client's streams really cross a Pilot tunnel to a second
//! embedded node. (Tests against the real `pilot-daemon` binary live in
//! `daemon_real.rs`.)

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pilot_driver_tokio::{Addr, DaemonClient, Error, Node, NodeConfig, Pilot, Stream};
use pilot_proto::wire::ipc::{self, IpcMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

fn frame(msg: &IpcMessage<'_>) -> Vec<u8> {
    let mut out = vec![0u8; msg.encoded_len()];
    let n = ipc::encode_frame(msg, &mut out).unwrap();
    out.truncate(n);
    out
}

type Writers = Arc<Mutex<HashMap<u32, Arc<tokio::sync::Mutex<WriteHalf<Stream>>>>>>;

/// Pumps a stream's data to the client as `Recv` pushes, then `CloseOk`.
fn pump(id: u32, mut r: tokio::io::ReadHalf<Stream>, out: mpsc::Sender<Vec<u8>>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let f = frame(&IpcMessage::Recv {
                        conn_id: id,
                        data: &buf[..n],
                    });
                    if out.send(f).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = out.send(frame(&IpcMessage::CloseOk { conn_id: id })).await;
    });
}

/// Serves IPC clients on `path`, backed by `node`.
async fn fake_daemon(node: Node, path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    let next_id = Arc::new(Mutex::new(1u32));
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let node = node.clone();
            let next_id = next_id.clone();
            tokio::spawn(serve_client(node, sock, next_id));
        }
    });
}

async fn serve_client(node: Node, sock: tokio::net::UnixStream, next_id: Arc<Mutex<u32>>) {
    let (mut r, mut w) = sock.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if w.write_all(&f).await.is_err() {
                break;
            }
        }
    });
    let writers: Writers = Arc::default();
    let mut keep = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        while let Some((body, used)) = ipc::parse_frame(&buf).unwrap() {
            let body = body.to_vec();
            buf.drain(..used);
            let msg = IpcMessage::decode(&body).unwrap();
            let new_id = || {
                let mut g = next_id.lock().unwrap();
                *g += 1;
                *g
            };
            match msg {
                IpcMessage::Bind { port } => {
                    let l = match node.listen(port) {
                        Ok(l) => l,
                        Err(_) => {
                            let m = format!("port {port} already bound");
                            let f = frame(&IpcMessage::Error {
                                code: 1,
                                message: &m,
                            });
                            tx.send(f).await.unwrap();
                            continue;
                        }
                    };
                    let d = node.bind_datagram(port).unwrap();
                    let (tx2, writers2) = (tx.clone(), writers.clone());
                    let id_src = next_id.clone();
                    keep.push(tokio::spawn(async move {
                        while let Ok(s) = l.accept().await {
                            let id = {
                                let mut g = id_src.lock().unwrap();
                                *g += 1;
                                *g
                            };
                            let (ra, rp) = s.peer_addr();
                            let (rd, wr) = tokio::io::split(s);
                            writers2
                                .lock()
                                .unwrap()
                                .insert(id, Arc::new(tokio::sync::Mutex::new(wr)));
                            let f = frame(&IpcMessage::Accept {
                                local_port: port,
                                conn_id: id,
                                remote: ra,
                                remote_port: rp,
                            });
                            tx2.send(f).await.unwrap();
                            pump(id, rd, tx2.clone());
                        }
                    }));
                    let tx3 = tx.clone();
                    keep.push(tokio::spawn(async move {
                        while let Ok(g) = d.recv_from().await {
                            let f = frame(&IpcMessage::RecvFrom {
                                src: g.src,
                                src_port: g.src_port,
                                dst_port: g.dst_port,
                                data: &g.data,
                            });
                            if tx3.send(f).await.is_err() {
                                break;
                            }
                        }
                    }));
                    tx.send(frame(&IpcMessage::BindOk { port })).await.unwrap();
                }
                IpcMessage::Dial { addr, port } => match node.connect(addr, port).await {
                    Ok(s) => {
                        let id = new_id();
                        let (rd, wr) = tokio::io::split(s);
                        writers
                            .lock()
                            .unwrap()
                            .insert(id, Arc::new(tokio::sync::Mutex::new(wr)));
                        tx.send(frame(&IpcMessage::DialOk { conn_id: id }))
                            .await
                            .unwrap();
                        pump(id, rd, tx.clone());
                    }
                    Err(e) => {
                        let m = e.to_string();
                        let f = frame(&IpcMessage::Error {
                            code: 1,
                            message: &m,
                        });
                        tx.send(f).await.unwrap();
                    }
                },
                IpcMessage::Send { conn_id, data } => {
                    let w = writers.lock().unwrap().get(&conn_id).cloned();
                    if let Some(w) = w {
                        let _ = w.lock().await.write_all(data).await;
                    }
                }
                IpcMessage::Close { conn_id } => {
                    let w = writers.lock().unwrap().remove(&conn_id);
                    if let Some(w) = w {
                        let _ = w.lock().await.shutdown().await;
                    }
                    tx.send(frame(&IpcMessage::CloseOk { conn_id }))
                        .await
                        .unwrap();
                }
                IpcMessage::SendTo {
                    dst,
                    dst_port,
                    data,
                } => {
                    let _ = node.send_datagram(dst, dst_port, data).await;
                }
                IpcMessage::Info => {
                    let j = serde_json::json!({
                        "address": node.addr().to_string(),
                        "node_id": node.addr().node,
                    })
                    .to_string();
                    tx.send(frame(&IpcMessage::InfoOk(&j))).await.unwrap();
                }
                other => panic!("stand-in daemon got {other:?}"),
            }
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    for k in keep {
        k.abort();
    }
}

/// An embedded node `e`, and a stand-in daemon over node `d`; returns
/// (e, client of d, d's address).
async fn setup(dir: &Path) -> (Node, DaemonClient, Addr) {
    let e = Node::start(NodeConfig::new(Addr::new(0, 30)))
        .await
        .unwrap();
    let d = Node::start(NodeConfig::new(Addr::new(0, 40)))
        .await
        .unwrap();
    e.introduce(&d).unwrap();
    let path = dir.join("pilot.sock");
    let daddr = d.addr();
    fake_daemon(d, &path).await;
    let c = DaemonClient::open(&path).await.unwrap();
    (e, c, daddr)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + i / 977) as u8) ^ seed)
        .collect()
}

#[tokio::test]
async fn client_dials_embedded_echo_and_reads_megabytes() {
    let dir = tempfile::tempdir().unwrap();
    let (e, c, daddr) = setup(dir.path()).await;
    assert_eq!(c.addr().await.unwrap(), daddr);
    assert_eq!(c.info().await.unwrap()["node_id"], 40);
    let l = e.listen(7).unwrap();
    tokio::spawn(async move {
        while let Ok(s) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(s);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let s = timeout(LIMIT, c.connect(e.addr(), 7))
        .await
        .unwrap()
        .unwrap();
    assert!(s.daemon_conn_id().is_some());
    let data = pattern(9, 2 << 20);
    let (mut r, mut w) = tokio::io::split(s);
    let up = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&up).await.unwrap();
        w.flush().await.unwrap();
        w
    });
    let mut back = vec![0u8; data.len()];
    timeout(LIMIT, r.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert!(back == data, "echo corrupted");
    let mut s = r.unsplit(writer.await.unwrap());
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn client_listens_and_embedded_node_dials_it() {
    let dir = tempfile::tempdir().unwrap();
    let (e, c, daddr) = setup(dir.path()).await;
    let l = c.listen(1000).await.unwrap();
    // A second use of the same port by this client is refused locally.
    assert!(matches!(c.listen(1000).await, Err(Error::PortInUse(1000))));
    // Another client of the same daemon is refused by the daemon.
    let c2 = DaemonClient::open(dir.path().join("pilot.sock"))
        .await
        .unwrap();
    match c2.listen(1000).await {
        Err(Error::Daemon(m)) => assert!(m.contains("already bound"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut out = e.connect(daddr, 1000).await.unwrap();
    let mut s = timeout(LIMIT, l.accept()).await.unwrap().unwrap();
    assert_eq!(s.peer_addr(), (e.addr(), out.local_port()));
    assert_eq!(s.local_port(), 1000);
    out.write_all(b"to the daemon app").await.unwrap();
    out.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"to the daemon app");
}

#[tokio::test]
async fn datagrams_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (e, c, daddr) = setup(dir.path()).await;
    let ds = c.bind_datagram(2000).await.unwrap();
    let es = e.bind_datagram(3000).unwrap();
    ds.send_to(e.addr(), 3000, b"from app").await.unwrap();
    let g = timeout(LIMIT, es.recv_from()).await.unwrap().unwrap();
    assert_eq!(g.data, b"from app");
    assert_eq!(g.src, daddr);
    es.send_to(daddr, 2000, b"to app").await.unwrap();
    let g = timeout(LIMIT, ds.recv_from()).await.unwrap().unwrap();
    assert_eq!((g.src, g.src_port, g.dst_port), (e.addr(), 3000, 2000));
    assert_eq!(g.data, b"to app");
}

#[tokio::test]
async fn dial_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let (_e, c, _) = setup(dir.path()).await;
    match c.connect(Addr::new(0, 999), 1).await {
        Err(Error::Daemon(_)) => {}
        other => panic!("{other:?}"),
    }
    // The client is still usable afterwards (replies stay in step).
    assert!(c.info().await.is_ok());
}

#[tokio::test]
async fn cancelled_requests_keep_replies_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let (e, c, _) = setup(dir.path()).await;
    let _l = e.listen(8).unwrap();
    // Abandon a dial right after it starts; the next requests still get
    // their own replies.
    let fut = c.connect(e.addr(), 8);
    let _ = timeout(Duration::from_micros(1), fut).await;
    for _ in 0..3 {
        let info = timeout(LIMIT, c.info()).await.unwrap().unwrap();
        assert_eq!(info["node_id"], 40);
    }
}

/// The same application code over both modes.
async fn greet(p: &Pilot, dst: Addr) -> Vec<u8> {
    let mut s = p.connect(dst, 9).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    s.flush().await.unwrap();
    let mut back = [0u8; 2];
    s.read_exact(&mut back).await.unwrap();
    back.to_vec()
}

#[tokio::test]
async fn one_api_for_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let (e, c, daddr) = setup(dir.path()).await;
    // Echo servers: one in the daemon-backed app, one in the embedded node.
    let daemon_side: Pilot = c.into();
    let embedded_side: Pilot = e.clone().into();
    for (p, port) in [(&daemon_side, 9u16), (&embedded_side, 9u16)] {
        let l = p.listen(port).await.unwrap();
        tokio::spawn(async move {
            while let Ok(s) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(s);
                    let mut b = [0u8; 2];
                    if r.read_exact(&mut b).await.is_ok() {
                        let _ = w.write_all(&b).await;
                        let _ = w.flush().await;
                    }
                    // Hold the stream until the peer is done.
                    let _ = r.read(&mut b).await;
                });
            }
        });
    }
    assert_eq!(daemon_side.addr().await.unwrap(), daddr);
    assert_eq!(
        timeout(LIMIT, greet(&daemon_side, e.addr())).await.unwrap(),
        b"hi"
    );
    assert_eq!(
        timeout(LIMIT, greet(&embedded_side, daddr)).await.unwrap(),
        b"hi"
    );
}
