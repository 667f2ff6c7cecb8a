//! An HTTP service on Pilot port 80 that unmodified programs reach through
//! the IP gateway (`spec/gateway.md`). This process is the *service*: an
//! embedded node that joins a registry, makes itself public and answers
//! HTTP on port 80. Any other machine with a daemon then runs:
//!
//! ```sh
//! sudo pilotctl gateway start --ports 80 web-demo   # maps it to 10.4.0.1
//! curl http://10.4.0.1/                             # plain curl, over Pilot
//! pilotctl gateway stop
//! ```
//!
//! `cargo run -p pilot-driver-tokio --example gateway_http -- 127.0.0.1:9000`
//! (the registry address; `pilotctl daemon start` runs one on
//! 127.0.0.1:9000). `driver-mio/tests/gateway_netns.rs` runs exactly this
//! setup in network namespaces.

use pilot_driver_tokio::{Node, NodeConfig, RegistryConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let registry = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into())
        .parse()?;
    let mut reg = RegistryConfig::new(registry);
    reg.public = true;
    reg.hostname = "web-demo".into();
    let node = Node::start(NodeConfig::with_registry(reg)).await?;
    println!("serving HTTP on {}:80 (hostname web-demo)", node.addr());
    let listener = node.listen(80)?;
    loop {
        let mut s = listener.accept().await?;
        let from = s.peer_addr().0;
        tokio::spawn(async move {
            // Read the request head, answer, close.
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 * 1024 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let body = format!("hello {from}, this page came over Pilot\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}
