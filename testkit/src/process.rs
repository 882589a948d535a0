//! Helpers for tests that run `scorer` processes and services: ports, database URLs, logs.

use std::path::Path;
use std::time::{Duration, Instant};

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (without_query, query) = match url.split_once('?') {
        Some((u, q)) => (u, format!("?{q}")),
        None => (url, String::new()),
    };
    let (server, _) = without_query
        .rsplit_once('/')
        .expect("DATABASE_URL names a database");
    format!("{server}/{db}{query}")
}

pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

pub async fn wait_port(port: u16, open: bool, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while port_open(port) != open {
        assert!(
            Instant::now() < deadline,
            "{what}: port {port} still {} after {within:?}",
            if open { "closed" } else { "open" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The last 30 lines of a log file (for a failing assertion's message).
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
