//! A received file that cannot be written: the sending `pilotctl
//! send-file` fails with the receiver's error and never sees an ACK
//! (`spec/daemon.md` §1.1: the ACK follows the disk write).

mod pilotctl_support;

use pilotctl_support::{Net, eventually, trust};

#[test]
fn a_failed_disk_write_is_an_error_for_the_sender_not_an_ack() {
    let net = Net::new();
    let alpha = net.node("alpha", &[]);
    let beta = net.node("beta", &[]);
    trust(&alpha, &beta);
    let b = beta.node_id.to_string();
    let src = net.dir.path().join("payload.bin");
    std::fs::write(&src, vec![5u8; 50_000]).expect("write file");

    // beta's received/ becomes a plain file: every save fails with
    // ENOTDIR, also for root (a mode change would not stop root).
    let received = beta.dir.join("received");
    std::fs::remove_dir_all(&received).expect("remove received/");
    std::fs::write(&received, b"not a directory").expect("block received/");

    let e = alpha.err(&["send-file", &b, src.to_str().expect("utf8")]);
    assert_eq!(e["code"], "refused", "{e}");
    let msg = e["message"].as_str().expect("message");
    assert!(
        msg.contains("ERR FILE save failed") && !msg.contains("ACK"),
        "{msg}"
    );

    // With the directory back, the next transfer is acknowledged.
    std::fs::remove_file(&received).expect("unblock");
    std::fs::create_dir(&received).expect("received/ again");
    let f = alpha.ok(&["send-file", &b, src.to_str().expect("utf8")]);
    assert_eq!(f["ack"], "ACK FILE 50000 bytes");
    eventually("the file in beta's received/", || {
        std::fs::read(received.join("payload.bin")).is_ok_and(|d| d.len() == 50_000)
    });
}
