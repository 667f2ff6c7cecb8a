//! An HTTP/1.1 server and client (hyper 1.x) over Pilot streams between two
//! embedded nodes in one process.
//!
//! `cargo run -p pilot-driver-tokio --example http`

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use pilot_driver_tokio::{Addr, Node, NodeConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn hello(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await?.to_bytes();
    let text = format!("hello from pilot: {path} ({} byte body)\n", body.len());
    Ok(Response::new(Full::new(Bytes::from(text))))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = Node::start(NodeConfig::new(Addr::new(1, 80))).await?;
    let client = Node::start(NodeConfig::new(Addr::new(1, 81))).await?;
    server.introduce(&client)?;

    let listener = server.listen(80)?;
    tokio::spawn(async move {
        while let Ok(stream) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(hello);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    eprintln!("server connection: {e}");
                }
            });
        }
    });

    let stream = client.connect(server.addr(), 80).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::post("/greeting")
        .header("host", server.addr().to_string())
        .body(Full::new(Bytes::from_static(b"ping")))?;
    let resp = sender.send_request(req).await?;
    println!("status: {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    print!("body: {}", String::from_utf8_lossy(&body));
    Ok(())
}
