//! An HTTP request/response (hyper 1.x) over a Pilot stream between two
//! embedded nodes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pilot_driver_tokio::{Addr, Node, NodeConfig};
use tokio::time::timeout;

#[tokio::test]
async fn http_request_response_over_pilot() {
    let server = Node::start(NodeConfig::new(Addr::new(2, 1))).await.unwrap();
    let client = Node::start(NodeConfig::new(Addr::new(2, 2))).await.unwrap();
    server.introduce(&client).unwrap();

    let listener = server.listen(80).unwrap();
    let srv = tokio::spawn(async move {
        let stream = listener.accept().await.unwrap();
        let remote = stream.peer_addr().0;
        let svc =
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let path = req.uri().path().to_string();
                let body = req.into_body().collect().await?.to_bytes();
                let mut out = format!("{path} from {remote}: ").into_bytes();
                out.extend_from_slice(&body);
                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(out))))
            });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await
            .unwrap();
    });

    let stream = client.connect(server.addr(), 80).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    // A body larger than one send buffer exercises back-pressure.
    let big = vec![b'z'; 300_000];
    let req = Request::post("/upload")
        .header("host", "pilot")
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let resp = timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let prefix = format!("/upload from {}: ", client.addr());
    assert!(body.starts_with(prefix.as_bytes()));
    assert_eq!(&body[prefix.len()..], &big[..]);
    // Closing the client connection ends the server's connection task.
    drop(sender);
    timeout(Duration::from_secs(60), conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    timeout(Duration::from_secs(60), srv)
        .await
        .unwrap()
        .unwrap();
}
