//! Helpers for tests that run `scorer` processes and services: ports, database URLs, logs, and
//! the child process handle ([`Proc`]) that is killed when dropped.

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

/// A child process (a `scorer` role) with its stderr in a log file; SIGKILLed when dropped, so
/// a failing test leaves nothing behind.
pub struct Proc {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Proc {
    /// Starts `program args` with `env`, stdout discarded and stderr written to `log`.
    pub fn spawn(program: &Path, args: &[String], env: &[(&str, String)], log: &Path) -> Proc {
        let stderr = std::fs::File::create(log).expect("log file");
        let child = std::process::Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Proc {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Waits until the log holds `needle`; fails if the process exits first or `within` passes.
    pub async fn wait_log(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "exited ({status}) before logging {needle:?}:\n{}",
                    log_tail(&self.log)
                );
            }
            if std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .contains(needle)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within {within:?}:\n{}",
                log_tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM (what Kubernetes and `docker stop` send).
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// Waits for the process to exit; fails if it is still running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {within:?} after being told to stop:\n{}",
                log_tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
