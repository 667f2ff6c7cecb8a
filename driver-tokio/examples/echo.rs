//! Echo server and client over a Pilot stream, with two embedded nodes in
//! one process talking over loopback UDP.
//!
//! `cargo run -p pilot-driver-tokio --example echo -- [message]`

use pilot_driver_tokio::{Addr, Error, Node, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let msg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "hello over pilot".to_string());

    let server = Node::start(NodeConfig::new(Addr::new(1, 100))).await?;
    let client = Node::start(NodeConfig::new(Addr::new(1, 200))).await?;
    server.introduce(&client)?;

    // Server: echo every accepted stream until the peer's end of stream.
    let listener = server.listen(7)?;
    println!("echo server on {}:7", server.addr());
    tokio::spawn(async move {
        while let Ok(stream) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    // Client: send, read the echo back, close.
    let mut s = client.connect(server.addr(), 7).await?;
    s.write_all(msg.as_bytes()).await?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await?;
    println!("echoed: {}", String::from_utf8_lossy(&back));
    s.shutdown().await?;
    Ok(())
}
