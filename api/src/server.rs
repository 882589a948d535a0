//! The HTTP server: hyper's HTTP/1 connection driver under our own accept loop, because
//! `axum::serve` has no connection limit and no timeouts. What each limit stops:
//!
//! - **connections** ([`HttpLimits::max_connections`]): a semaphore taken before `accept`; once
//!   it is spent, new connections wait in the kernel's backlog instead of costing a file
//!   descriptor each (20k idle sockets used to exhaust them: `accept error: Too many open files`);
//! - **idle** ([`HttpLimits::idle_timeout`]): a connection with no request in progress and no
//!   byte read or written for that long is closed (keep-alive, or a socket opened and never used);
//! - **headers** ([`HttpLimits::header_read_timeout`]): from the first byte of a request to the
//!   end of its head; a head sent a byte at a time is cut off;
//! - **bodies** ([`body_deadline`]): the whole body must arrive within
//!   [`HttpLimits::body_read_timeout`] (the batch upload: [`HttpLimits::upload_read_timeout`]);
//!   past it the request is answered 408 and the connection closed.
//!
//! Each connection has a watchdog that reads its activity (bytes moved, requests in progress)
//! and drops the connection when a rule says so; dropping it closes the socket.
//!
//! **Shutdown** (SIGTERM or Ctrl-C, [`shutdown_signal`]): the listener is closed at once (new
//! connections are refused, so a load balancer moves on), idle keep-alive connections are
//! closed, and each request in progress gets until [`HttpLimits::shutdown_grace`] to be
//! answered. A sync score wait learns of the deadline through the [`Draining`] extension and
//! answers its 504 (with the job to poll) just before it, rather than being cut off with no
//! answer; whatever is still open at the deadline is dropped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::AppState;
use crate::error::error_response;

/// Limits of the HTTP server itself (docs/CONFIGURATION.md, "HTTP server").
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections served at once (default 1,024); more wait in the listen backlog.
    pub max_connections: usize,
    /// A connection with no request in progress and no traffic for this long is closed
    /// (default 60 s).
    pub idle_timeout: Duration,
    /// From a request's first byte to the end of its head (default 10 s).
    pub header_read_timeout: Duration,
    /// A request body must have arrived whole within this (default 60 s), except the batch
    /// upload's.
    pub body_read_timeout: Duration,
    /// The same for `POST /v1/batches`, whose file may be large (default 1 h).
    pub upload_read_timeout: Duration,
    /// After shutdown begins, how long requests in progress have to be answered (default
    /// 30 s, `--shutdown-grace`).
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            upload_read_timeout: Duration::from_secs(3600),
            shutdown_grace: scorer_jobs::deadline::DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` completes; then stops accepting,
/// lets each connection finish the request it is answering, and returns when all are closed or
/// `limits.shutdown_grace` has passed, whichever comes first.
pub async fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("listener address")?;
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    tracing::info!(%addr, max_connections = max, "listening");
    let slots = Arc::new(Semaphore::new(max));
    // `Some(deadline)` once shutting down: when the drain ends.
    let (closing_tx, closing) = watch::channel(None);
    let limits = Arc::new(limits);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if slots.available_permits() == 0 {
            metrics::counter!("scorer_http_connection_limit_reached_total").increment(1);
            tracing::debug!(max, "connection limit reached: new connections wait");
        }
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.context("connection slots")?,
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (app, limits, closing) = (app.clone(), limits.clone(), closing.clone());
        tokio::spawn(async move {
            metrics::gauge!("scorer_http_connections").increment(1.0);
            connection(tcp, app, &limits, closing).await;
            metrics::gauge!("scorer_http_connections").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    let drained_by = tokio::time::Instant::now() + limits.shutdown_grace;
    let _ = closing_tx.send(Some(drained_by));
    // Every connection holds a permit until it is closed.
    let open = slots.acquire_many(max as u32);
    if tokio::time::timeout_at(drained_by, open).await.is_err() {
        let left = max - slots.available_permits();
        tracing::warn!(connections = left, grace = ?limits.shutdown_grace,
            "connections still open at the end of the shutdown grace period; dropping them");
    }
    Ok(())
}

/// A request's view of the server's shutdown (a request extension): lets a handler that waits
/// answer before the drain deadline instead of being cut off.
#[derive(Clone)]
pub struct Draining(watch::Receiver<Option<tokio::time::Instant>>);

impl Draining {
    /// Completes when a waiting handler should stop waiting and answer: a little before the
    /// drain deadline (a second, or a quarter of the grace if that is shorter), so the answer
    /// is written before the connection is dropped. Never, while the server is not shutting
    /// down.
    pub async fn must_answer(&self) {
        let mut closing = self.0.clone();
        let deadline = match closing.wait_for(Option::is_some).await {
            Ok(deadline) => *deadline,
            // The server is gone; nothing to answer for.
            Err(_) => None,
        };
        let Some(deadline) = deadline else {
            return std::future::pending().await;
        };
        let now = tokio::time::Instant::now();
        let margin = Duration::from_secs(1).min(deadline.saturating_duration_since(now) / 4);
        tokio::time::sleep_until(deadline.checked_sub(margin).unwrap_or(deadline)).await;
    }
}

/// What a connection's watchdog looks at.
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last byte read or written, or of the last response.
    last_io: AtomicU64,
    /// Milliseconds since `start` of the first byte of a request head not yet complete.
    head_since: AtomicU64,
    in_flight: AtomicUsize,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_io: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(NONE, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    /// A request head is complete: its handler runs until the guard is dropped.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(NONE, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &HttpLimits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = self.now();
        let head = self.head_since.load(Ordering::Relaxed);
        if head != NONE {
            let waited = Duration::from_millis(now.saturating_sub(head));
            return (waited > limits.header_read_timeout).then_some("request head too slow");
        }
        let quiet = Duration::from_millis(now.saturating_sub(self.last_io.load(Ordering::Relaxed)));
        (quiet > limits.idle_timeout).then_some("idle")
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.wrote();
    }
}

/// A socket that tells its [`Activity`] about every byte moved.
struct Watched {
    tcp: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Resolves when the connection has broken one of the rules.
async fn watchdog(activity: &Activity, limits: &HttpLimits) -> &'static str {
    let tick = limits
        .idle_timeout
        .min(limits.header_read_timeout)
        .div_f64(4.0)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        if let Some(why) = activity.expired(limits) {
            return why;
        }
    }
}

async fn connection(
    tcp: TcpStream,
    app: axum::Router,
    limits: &HttpLimits,
    mut closing: watch::Receiver<Option<tokio::time::Instant>>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        tcp,
        activity: activity.clone(),
    });
    let requests = activity.clone();
    let draining = Draining(closing.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let guard = requests.begin();
        let mut app = app.clone();
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(draining.clone());
        async move {
            let response = tower::Service::call(&mut app, req).await;
            drop(guard);
            response
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        why = watchdog(&activity, limits) => {
            metrics::counter!("scorer_http_connections_closed_total", "why" => why).increment(1);
            tracing::debug!(why, "closing connection");
            return;
        }
        _ = closing.changed() => conn.as_mut().graceful_shutdown(),
    }
    // Shutting down: the request in progress finishes; the rules still apply meanwhile.
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = watchdog(&activity, limits) => {}
    }
}

/// Marks a body that ran past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {:.1} s", .0.as_secs_f64())]
struct BodyTimedOut(Duration);

/// Middleware: the request body must arrive whole within its deadline; past it the handler sees
/// a read error and the answer is 408 (whatever the handler made of the error), with the
/// connection closed.
pub(crate) async fn body_deadline(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let limits = &state.config.http;
    let limit = if req.method() == Method::POST && req.uri().path() == "/v1/batches" {
        limits.upload_read_timeout
    } else {
        limits.body_read_timeout
    };
    let expired = Arc::new(AtomicBool::new(false));
    let flag = expired.clone();
    let deadline = tokio::time::Instant::now() + limit;
    let (parts, body) = req.into_parts();
    let timed = futures::stream::unfold(Some(body.into_data_stream()), move |stream| {
        let flag = flag.clone();
        async move {
            let mut stream = stream?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(stream))),
                Ok(None) => None,
                Err(_) => {
                    flag.store(true, Ordering::Relaxed);
                    Some((Err(axum::Error::new(BodyTimedOut(limit))), None))
                }
            }
        }
    });
    let response = next
        .run(Request::from_parts(parts, Body::from_stream(timed)))
        .await;
    if !expired.load(Ordering::Relaxed) {
        return response;
    }
    metrics::counter!("scorer_http_body_timeouts_total").increment(1);
    let mut timed_out =
        error_response(StatusCode::REQUEST_TIMEOUT, BodyTimedOut(limit).to_string());
    timed_out
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    timed_out
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
