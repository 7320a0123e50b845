//! A forward HTTP proxy on 127.0.0.1, as a studio's proxy in front of S3: each absolute-form
//! request (`PUT http://host:port/key`) is sent on to its host and the reply passed back, and
//! a `CONNECT host:port` (how clients reach `https://` stores through a proxy) becomes a
//! tunnel. It counts what it forwarded and tunnelled and keeps each `Proxy-Authorization`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Seen {
    forwarded: AtomicUsize,
    tunnels: AtomicUsize,
    auth: Mutex<Vec<String>>,
}

pub struct TestProxy {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    seen: Arc<Seen>,
    _runtime: tokio::runtime::Runtime,
}

impl TestProxy {
    /// Serves on a runtime of its own, so synchronous tests can run the binary meanwhile.
    pub fn start_background() -> TestProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| forward(req, s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestProxy {
            url,
            seen,
            _runtime: runtime,
        }
    }

    /// The proxy's URL with credentials in it, as users write them in `HTTPS_PROXY`.
    pub fn url_with_auth(&self, user: &str, password: &str) -> String {
        self.url
            .replacen("http://", &format!("http://{user}:{password}@"), 1)
    }

    /// Requests forwarded so far.
    pub fn forwarded(&self) -> usize {
        self.seen.forwarded.load(Ordering::SeqCst)
    }

    /// Every request and tunnel so far carried `user:password` as Basic proxy credentials.
    pub fn assert_every_request_authorized_as(&self, user: &str, password: &str) {
        use base64::Engine;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let auth = self.auth();
        assert!(
            !auth.is_empty() && auth.iter().all(|a| *a == basic),
            "{auth:?}"
        );
    }

    /// CONNECT tunnels opened so far.
    pub fn tunnels(&self) -> usize {
        self.seen.tunnels.load(Ordering::SeqCst)
    }

    /// The `Proxy-Authorization` of each forwarded request and tunnel ("" where there was
    /// none).
    pub fn auth(&self) -> Vec<String> {
        self.seen.auth.lock().unwrap().clone()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type Reply = Response<http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>>;

async fn forward(req: Request<Incoming>, seen: Arc<Seen>) -> Result<Reply, BoxError> {
    use http_body_util::Either;
    let authority = req
        .uri()
        .authority()
        .ok_or("not an absolute-form request: the client did not treat this as a proxy")?
        .to_string();
    let auth = req
        .headers()
        .get(hyper::header::PROXY_AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    seen.auth.lock().unwrap().push(auth);
    if req.method() == hyper::Method::CONNECT {
        seen.tunnels.fetch_add(1, Ordering::SeqCst);
        let mut target = TcpStream::connect(authority).await?;
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let mut client = TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut target).await;
            }
        });
        return Ok(Response::new(Either::Right(http_body_util::Empty::new())));
    }
    seen.forwarded.fetch_add(1, Ordering::SeqCst);
    let (mut head, body) = req.into_parts();
    head.headers.remove(hyper::header::PROXY_AUTHORIZATION);
    head.uri = head
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()?;
    let stream = TcpStream::connect(authority).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let reply = sender.send_request(Request::from_parts(head, body)).await?;
    Ok(reply.map(Either::Left))
}
