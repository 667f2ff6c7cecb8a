//! Tests of the client session: routing, pre-registration, back-pressure,
//! queue bounds and the bad-input policy of `spec/ipc.md` §11.

use super::*;
use crate::addr::Addr;

fn f(msg: &IpcMessage<'_>) -> Vec<u8> {
    frame(msg).expect("encode")
}

fn feed(s: &mut ClientSession, bytes: &[u8]) {
    assert_eq!(s.handle_input(bytes), bytes.len(), "input taken whole");
}

fn readies(s: &mut ClientSession) -> Vec<Ready> {
    std::iter::from_fn(|| s.poll_ready()).collect()
}

fn transmits(s: &mut ClientSession) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

fn recv(conn_id: u32, data: &[u8]) -> Vec<u8> {
    f(&IpcMessage::Recv { conn_id, data })
}

fn accept(port: u16, conn_id: u32) -> Vec<u8> {
    f(&IpcMessage::Accept {
        local_port: port,
        conn_id,
        remote: Addr::new(0, 7),
        remote_port: 49153,
    })
}

fn dgram(port: u16, data: &[u8]) -> Vec<u8> {
    f(&IpcMessage::RecvFrom {
        src: Addr::new(0, 9),
        src_port: 1,
        dst_port: port,
        data,
    })
}

#[test]
fn pushes_before_a_reply_are_not_the_reply_and_dial_ok_preregisters() {
    let mut s = ClientSession::default();
    let out = s
        .request(&IpcMessage::Dial {
            addr: Addr::new(0, 2),
            port: 7,
        })
        .expect("request");
    assert_eq!(
        IpcMessage::decode(&out[4..]).expect("dial frame"),
        IpcMessage::Dial {
            addr: Addr::new(0, 2),
            port: 7
        }
    );
    s.open_datagrams(5000);
    // A push, the reply, and data for the new connection in one read.
    let mut bytes = dgram(5000, b"hi");
    bytes.extend(f(&IpcMessage::DialOk { conn_id: 5 }));
    bytes.extend(recv(5, b"hello"));
    feed(&mut s, &bytes);
    assert_eq!(
        readies(&mut s),
        vec![Ready::Reply, Ready::Conn(5), Ready::Datagram(5000)]
    );
    let reply = s.take_reply().expect("reply");
    assert_eq!(reply.request(), Command::Dial);
    assert_eq!(
        reply.message(),
        Ok(IpcMessage::DialOk { conn_id: 5 }),
        "the DialOk, not the push"
    );
    assert_eq!(s.read_chunk(5), Read::Data(b"hello".to_vec()));
    assert_eq!(s.recv_datagram(5000).expect("dgram").data, b"hi");
    assert!(!s.request_outstanding());
}

#[test]
fn error_completes_the_request_and_close_ok_is_always_a_push() {
    let mut s = ClientSession::default();
    s.request(&IpcMessage::Bind { port: 1000 }).expect("req");
    // A CloseOk (answering an earlier Close) is not the reply.
    feed(&mut s, &f(&IpcMessage::CloseOk { conn_id: 3 }));
    assert!(s.take_reply().is_none());
    feed(
        &mut s,
        &f(&IpcMessage::Error {
            code: 1,
            message: "port 1000 already bound",
        }),
    );
    let r = s.take_reply().expect("reply");
    assert_eq!(
        r.payload(),
        Err(ReplyError::Daemon("port 1000 already bound".into()))
    );
}

#[test]
fn stray_replies_and_unknown_commands_are_counted_and_ignored() {
    let mut s = ClientSession::default();
    feed(&mut s, &f(&IpcMessage::InfoOk("{}")));
    // Unassigned command byte 0x7F with some payload.
    feed(&mut s, &[0, 0, 0, 2, 0x7F, 1]);
    // A reply of the wrong kind for the live request.
    s.request(&IpcMessage::Info).expect("req");
    feed(&mut s, &f(&IpcMessage::BindOk { port: 1 }));
    assert!(s.take_reply().is_none());
    assert_eq!(s.stats().stray_frames, 3);
    assert!(!s.is_closed());
    feed(&mut s, &f(&IpcMessage::InfoOk(r#"{"a":1}"#)));
    assert_eq!(
        s.take_reply().expect("reply").payload(),
        Ok(&br#"{"a":1}"#[..])
    );
}

#[test]
fn a_push_that_does_not_decode_ends_the_session() {
    let mut s = ClientSession::default();
    s.request(&IpcMessage::Info).expect("req");
    // Recv with a 2-byte conn id.
    feed(&mut s, &[0, 0, 0, 3, Command::Recv.byte(), 0, 1]);
    assert!(s.is_closed());
    assert!(
        s.close_reason().expect("reason").contains("bad recv push"),
        "{:?}",
        s.close_reason()
    );
    assert_eq!(readies(&mut s), vec![Ready::Closed]);
    assert!(s.take_reply().is_none());
    assert_eq!(s.input_room(), 0);
    assert_eq!(
        s.request(&IpcMessage::Info),
        Err(RequestError::Closed),
        "no request on a dead session"
    );
}

#[test]
fn an_oversized_length_prefix_ends_the_session() {
    let mut s = ClientSession::default();
    feed(&mut s, &u32::MAX.to_be_bytes());
    assert!(s.close_reason().expect("reason").contains("bad frame"));
}

#[test]
fn a_full_connection_buffer_stops_input_until_the_application_reads() {
    let mut s = ClientSession::new(SessionLimits {
        conn_buffer: 10,
        ..SessionLimits::default()
    });
    s.listen(80);
    let mut bytes = accept(80, 1);
    bytes.extend(recv(1, b"12345678"));
    bytes.extend(recv(1, b"abcdefgh")); // 16 > 10: held up
    bytes.extend(f(&IpcMessage::CloseOk { conn_id: 1 }));
    feed(&mut s, &bytes);
    assert_eq!(s.buffered(1), 8);
    assert_eq!(s.input_room(), 0, "stalled");
    assert_eq!(s.handle_input(b"x"), 0, "nothing taken while stalled");
    assert_eq!(s.accept(80).expect("accepted").conn_id, 1);
    let mut buf = [0u8; 3];
    assert_eq!(s.read(1, &mut buf), Read::Data(3));
    assert_eq!(&buf, b"123");
    // 5 + 8 > 10: still held.
    assert_eq!(s.input_room(), 0);
    let mut rest = [0u8; 64];
    assert_eq!(s.read(1, &mut rest), Read::Data(5));
    // The held frame and the CloseOk behind it were routed.
    assert!(s.input_room() > 0);
    assert_eq!(s.read(1, &mut rest), Read::Data(8));
    assert_eq!(&rest[..8], b"abcdefgh");
    assert_eq!(s.read(1, &mut rest), Read::Eof);
    // A single frame larger than the limit is taken when the buffer is empty.
    s.listen(81);
    feed(&mut s, &accept(81, 2));
    feed(&mut s, &recv(2, &[9u8; 40]));
    assert_eq!(s.buffered(2), 40);
}

#[test]
fn closing_a_stalled_connection_resumes_input() {
    let mut s = ClientSession::new(SessionLimits {
        conn_buffer: 4,
        ..SessionLimits::default()
    });
    s.listen(80);
    let mut bytes = accept(80, 1);
    bytes.extend(recv(1, b"1234"));
    bytes.extend(recv(1, b"5678"));
    bytes.extend(f(&IpcMessage::InfoOk("{}")));
    feed(&mut s, &bytes);
    assert_eq!(s.input_room(), 0);
    let close = s.close(1);
    assert_eq!(
        IpcMessage::decode(&close[4..]),
        Ok(IpcMessage::Close { conn_id: 1 })
    );
    assert!(s.input_room() > 0);
    assert_eq!(
        s.stats().discarded_recv,
        1,
        "the held data was for a closed id"
    );
    assert_eq!(s.stats().stray_frames, 1, "and the frame behind it routed");
}

#[test]
fn accepts_on_ports_not_listening_or_over_the_queue_are_closed() {
    let mut s = ClientSession::new(SessionLimits {
        accept_queue: 2,
        ..SessionLimits::default()
    });
    feed(&mut s, &accept(80, 1)); // not listening
    s.listen(80);
    for id in 2..=4 {
        feed(&mut s, &accept(80, id)); // 4 is over the queue
    }
    feed(&mut s, &accept(80, 2)); // id in use: counted, not closed
    let closes: Vec<_> = transmits(&mut s)
        .iter()
        .map(|t| {
            IpcMessage::decode(&t[4..])
                .expect("close")
                .clone_owned_close()
        })
        .collect();
    assert_eq!(closes, vec![1, 4]);
    assert_eq!(s.stats().refused_accepts, 3);
    // Stopping the listener closes what is still queued.
    s.stop_listening(80);
    let closes: Vec<_> = transmits(&mut s)
        .iter()
        .map(|t| {
            IpcMessage::decode(&t[4..])
                .expect("close")
                .clone_owned_close()
        })
        .collect();
    assert_eq!(closes, vec![2, 3]);
    assert!(s.accept(80).is_none());
    assert!(!s.is_writable(2));
}

trait CloseId {
    fn clone_owned_close(&self) -> u32;
}

impl CloseId for IpcMessage<'_> {
    fn clone_owned_close(&self) -> u32 {
        match self {
            IpcMessage::Close { conn_id } => *conn_id,
            other => panic!("not a Close: {other:?}"),
        }
    }
}

#[test]
fn datagrams_for_closed_ports_or_full_queues_are_dropped() {
    let mut s = ClientSession::new(SessionLimits {
        datagram_queue: 2,
        ..SessionLimits::default()
    });
    feed(&mut s, &dgram(7, b"a")); // not open
    s.open_datagrams(7);
    for d in [b"b", b"c", b"d"] {
        feed(&mut s, &dgram(7, d));
    }
    assert_eq!(s.stats().dropped_datagrams, 2);
    let got: Vec<_> = std::iter::from_fn(|| s.recv_datagram(7))
        .map(|d| d.data)
        .collect();
    assert_eq!(
        got,
        vec![b"b".to_vec(), b"c".to_vec()],
        "the newcomer is dropped"
    );
    feed(&mut s, &dgram(7, b"e"));
    s.close_datagrams(7);
    assert!(s.recv_datagram(7).is_none());
}

#[test]
fn an_abandoned_dial_is_closed_when_its_reply_comes() {
    let mut s = ClientSession::default();
    let dial = IpcMessage::Dial {
        addr: Addr::new(0, 2),
        port: 7,
    };
    s.request(&dial).expect("req");
    s.abandon_request();
    // The next request may start while the abandoned one is outstanding.
    s.request(&IpcMessage::Info).expect("second request");
    let mut bytes = f(&IpcMessage::DialOk { conn_id: 9 });
    bytes.extend(recv(9, b"late"));
    bytes.extend(f(&IpcMessage::InfoOk("{}")));
    feed(&mut s, &bytes);
    let t = transmits(&mut s);
    assert_eq!(t.len(), 1);
    assert_eq!(
        IpcMessage::decode(&t[0][4..]),
        Ok(IpcMessage::Close { conn_id: 9 })
    );
    assert!(!s.is_writable(9));
    assert_eq!(s.stats().abandoned_replies, 1);
    assert_eq!(s.stats().discarded_recv, 1);
    assert_eq!(s.take_reply().expect("info").request(), Command::Info);

    // Abandoned after the reply arrived: closed at once.
    s.request(&dial).expect("req");
    feed(&mut s, &f(&IpcMessage::DialOk { conn_id: 10 }));
    s.abandon_request();
    assert_eq!(transmits(&mut s).len(), 1);
    assert!(!s.is_writable(10));
    assert!(s.take_reply().is_none());
}

#[test]
fn requests_are_one_at_a_time_and_only_with_replies() {
    let mut s = ClientSession::default();
    assert_eq!(
        s.request(&IpcMessage::Close { conn_id: 1 }),
        Err(RequestError::NoReply("close"))
    );
    assert_eq!(
        s.request(&IpcMessage::Send {
            conn_id: 1,
            data: b"x"
        }),
        Err(RequestError::NoReply("send"))
    );
    s.request(&IpcMessage::Info).expect("req");
    assert_eq!(s.request(&IpcMessage::Health), Err(RequestError::Busy));
    feed(&mut s, &f(&IpcMessage::InfoOk("{}")));
    assert_eq!(
        s.request(&IpcMessage::Health),
        Err(RequestError::Busy),
        "until its reply is taken"
    );
    assert!(s.take_reply().is_some());
    s.request(&IpcMessage::Health).expect("free again");
    // Abandoned requests are bounded.
    for _ in 0..2 * MAX_OUTSTANDING {
        s.abandon_request();
        s.request(&IpcMessage::Info).expect("req");
    }
    assert!(s.outstanding.len() <= MAX_OUTSTANDING);
}

#[test]
fn a_hang_up_ends_waits_but_keeps_buffered_data_readable() {
    let mut s = ClientSession::default();
    s.listen(80);
    let mut bytes = accept(80, 1);
    bytes.extend(accept(80, 2));
    bytes.extend(recv(1, b"abc"));
    bytes.extend(f(&IpcMessage::CloseOk { conn_id: 2 }));
    feed(&mut s, &bytes);
    s.handle_closed(None);
    assert!(s.is_closed());
    assert_eq!(s.close_reason(), None);
    assert_eq!(s.read_chunk(1), Read::Data(b"abc".to_vec()));
    assert_eq!(s.read_chunk(1), Read::Closed);
    assert_eq!(s.read_chunk(2), Read::Eof);
    assert_eq!(s.read_chunk(3), Read::Eof, "unknown id");
    assert!(!s.is_writable(1));
}

#[test]
fn any_split_of_the_input_routes_the_same() {
    let mut bytes = f(&IpcMessage::BindOk { port: 80 });
    bytes.extend(accept(80, 1));
    bytes.extend([0, 0, 0, 0]); // zero-length frame
    bytes.extend(recv(1, b"hello world"));
    bytes.extend(dgram(80, b"dg"));
    bytes.extend(f(&IpcMessage::CloseOk { conn_id: 1 }));
    let run = |chunk: usize| {
        let mut s = ClientSession::default();
        s.listen(80);
        s.open_datagrams(80);
        s.request(&IpcMessage::Bind { port: 80 }).expect("req");
        for c in bytes.chunks(chunk) {
            feed(&mut s, c);
        }
        let reply = s.take_reply().map(Reply::into_body);
        let a = s.accept(80);
        let mut data = Vec::new();
        while let Read::Data(d) = s.read_chunk(1) {
            data.extend(d);
        }
        (
            reply,
            a,
            data,
            s.read_chunk(1),
            s.recv_datagram(80),
            s.stats(),
        )
    };
    let whole = run(bytes.len());
    assert_eq!(whole.2, b"hello world");
    assert_eq!(whole.3, Read::Eof);
    for chunk in 1..bytes.len() {
        assert_eq!(run(chunk), whole, "split every {chunk} bytes");
    }
}
