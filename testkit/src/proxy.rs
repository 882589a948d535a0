//! A TCP forwarder in front of a real service that a test can cut (connections dropped, new ones
//! closed at once: the service is down) or hang (connections accepted and held, nothing
//! forwarded: the service stopped answering), then restore. The real service is never touched,
//! so other tests using it concurrently are not disturbed.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// Open connections are dropped; new ones are accepted and closed at once.
    Down,
    /// Open connections stop moving bytes; new ones are accepted and never answered.
    Hang,
}

pub struct FaultProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(target: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("addr").port();
        let (mode, _) = watch::channel(Mode::Forward);
        let modes = mode.clone();
        let target = target.to_string();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(serve(client, target.clone(), modes.subscribe()));
            }
        });
        FaultProxy { port, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Until the mode changes from the one given: holds the connection, forwarding nothing.
async fn hold(mode: &mut watch::Receiver<Mode>, held: Mode) {
    while *mode.borrow_and_update() == held {
        if mode.changed().await.is_err() {
            return;
        }
    }
}

async fn serve(mut client: TcpStream, target: String, mut mode: watch::Receiver<Mode>) {
    let now = *mode.borrow_and_update();
    match now {
        Mode::Down => return,
        Mode::Hang => {
            // Never answered; dropped (closed) once the service "comes back".
            hold(&mut mode, Mode::Hang).await;
            return;
        }
        Mode::Forward => {}
    }
    let Ok(mut server) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            n = cr.read(&mut up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if sw.write_all(&up[..n]).await.is_err() { return },
            },
            n = sr.read(&mut down) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if cw.write_all(&down[..n]).await.is_err() { return },
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *mode.borrow_and_update();
                match now {
                    Mode::Forward => {}
                    Mode::Down => return,
                    Mode::Hang => {
                        hold(&mut mode, Mode::Hang).await;
                        // Whatever was in flight is lost; the peers must reconnect.
                        return;
                    }
                }
            }
        }
    }
}
