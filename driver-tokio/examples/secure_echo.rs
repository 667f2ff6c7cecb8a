//! A tokio client and server over the secure channel (port 443,
//! `spec/services.md` §11) between two embedded nodes in one process: the
//! server echoes every record back in upper case.
//!
//! `cargo run -p pilot-driver-tokio --example secure_echo`
//!
//! Against a daemon instead, open the stream with `DaemonClient::connect`
//! (or accept it from `DaemonClient::listen(443)`); `SecureStream` works on
//! any `AsyncRead + AsyncWrite`. `pilotctl connect <peer> 443 --secure
//! --message hi` is a ready-made client.

use pilot_driver_tokio::secure::SecureStream;
use pilot_driver_tokio::{Addr, Node, NodeConfig, WireProfile};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = Node::start(NodeConfig::new(Addr::new(1, 443))).await?;
    let client = Node::start(NodeConfig::new(Addr::new(1, 444))).await?;
    server.introduce(&client)?;

    let listener = server.listen(443)?;
    let task = tokio::spawn(async move {
        let stream = listener.accept().await?;
        let mut s = SecureStream::server(stream, WireProfile::Current).await?;
        while let Some(msg) = s.recv().await? {
            s.send(&msg.to_ascii_uppercase()).await?;
        }
        Ok::<_, std::io::Error>(())
    });

    let stream = client.connect(server.addr(), 443).await?;
    let mut s = SecureStream::client(stream, WireProfile::Current).await?;
    for line in ["hello", "over an end-to-end encrypted channel"] {
        s.send(line.as_bytes()).await?;
        let reply = s.recv().await?.unwrap_or_default();
        println!("{line} -> {}", String::from_utf8_lossy(&reply));
    }
    s.shutdown().await?;
    task.await??;
    Ok(())
}
