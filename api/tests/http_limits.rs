//! The HTTP server's own limits (issue 14, defect 6), on raw sockets against the API over the
//! real RabbitMQ, Redis and Postgres: idle connections and slow request heads are closed, a body
//! sent a byte at a time is answered 408, and connections past the bound wait instead of being
//! served. Before these limits every one of those sockets was held open for ever.

mod common;

use std::time::{Duration, Instant};

use common::{Backing, Harness};
use scorer_api::HttpLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHORT: Duration = Duration::from_secs(1);

fn limits(max_connections: usize) -> HttpLimits {
    HttpLimits {
        max_connections,
        idle_timeout: SHORT,
        header_read_timeout: SHORT,
        body_read_timeout: SHORT,
        upload_read_timeout: SHORT,
        ..HttpLimits::default()
    }
}

async fn connect(h: &Harness) -> TcpStream {
    TcpStream::connect(h.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (or `within` passes: then `None`); what it sent.
async fn read_to_close(sock: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_slow_heads_are_closed() {
    let h = Harness::start(Backing::Real, |c| c.http = limits(64)).await;

    // A socket opened and never used.
    let started = Instant::now();
    let mut idle = connect(&h).await;
    let sent = read_to_close(&mut idle, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert_eq!(sent.as_deref(), Some(""), "an idle socket is closed");
    assert!(
        waited >= Duration::from_millis(900),
        "closed early: {waited:?}"
    );
    eprintln!("[http_limits] idle socket closed after {waited:?}");

    // Keep-alive: one answered request, then silence.
    let mut kept = connect(&h).await;
    kept.write_all(HEALTH).await.expect("write");
    let started = Instant::now();
    let sent = read_to_close(&mut kept, Duration::from_secs(10))
        .await
        .expect("a kept-alive idle connection is closed");
    assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
    eprintln!(
        "[http_limits] kept-alive connection closed {:?} after its answer",
        started.elapsed()
    );

    // A head sent a byte every 200 ms: never complete, always busy.
    let mut slow = connect(&h).await;
    slow.write_all(b"GET /health HTTP/1.1\r\nx-slow: ")
        .await
        .expect("write");
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if slow.write_all(b"a").await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a head trickled a byte at a time is cut off");
    eprintln!(
        "[http_limits] trickled head cut off after {:?}",
        started.elapsed()
    );

    // The server still answers.
    let resp = h
        .http
        .get(format!("{}/health", h.base))
        .send()
        .await
        .expect("health");
    assert!(resp.status().is_success());
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_sent_byte_by_byte_is_answered_408() {
    // A tenant of its own, so the batch listed at the end is this test's.
    let key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let h = Harness::start(Backing::Real, |c| {
        c.http = limits(64);
        c.api_keys.insert(key.clone(), key.clone());
    })
    .await;
    for path in ["/v1/score", "/v1/score/jobs", "/v1/batches"] {
        let mut sock = connect(&h).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             authorization: Bearer {key}\r\ncontent-length: 1000\r\n\r\n{{"
        );
        sock.write_all(head.as_bytes()).await.expect("write");
        let started = Instant::now();
        let answer = read_answer_while_trickling(&mut sock, Duration::from_secs(10)).await;
        let answer = answer.unwrap_or_else(|| panic!("{path}: no answer to a trickled body"));
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(
            body.contains("\"type\":\"RequestTimeoutError\""),
            "{path}: {answer}"
        );
        eprintln!(
            "[http_limits] {path}: trickled body answered 408 after {:?}",
            started.elapsed()
        );
    }
    // The upload cut off by its deadline failed its batch (it is not left `validating`).
    let list: serde_json::Value = h
        .http
        .get(format!("{}/v1/batches?limit=1", h.base))
        .bearer_auth(&key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["data"][0]["status"], "failed", "{list}");
    h.finish().await;
}

/// Writes a byte every 100 ms while reading; the answer once the server closes.
async fn read_answer_while_trickling(sock: &mut TcpStream, within: Duration) -> Option<String> {
    let (mut rd, mut wr) = sock.split();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = tick.tick() => {
                let _ = wr.write_all(b" ").await;
            }
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_bound_wait() {
    let h = Harness::start(Backing::Real, |c| {
        c.http = HttpLimits {
            idle_timeout: Duration::from_secs(30),
            ..limits(3)
        }
    })
    .await;
    // Three connections, each answered once and then held open: every slot is taken.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut sock = connect(&h).await;
        sock.write_all(HEALTH).await.expect("write");
        let mut buf = [0u8; 1024];
        let n = sock.read(&mut buf).await.expect("answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(sock);
    }
    // A fourth is accepted by the kernel but not served while they are held.
    let mut waiting = connect(&h).await;
    waiting.write_all(HEALTH).await.expect("write");
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(1500), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "a connection past the bound was served");
    // One slot freed: it is served.
    drop(held.pop());
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), waiting.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    eprintln!(
        "[http_limits] waiting connection served {:?} after a slot was freed",
        started.elapsed()
    );
    drop(held);
    h.finish().await;
}
