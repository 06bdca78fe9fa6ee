//! One address for a database, as a DNS name or a pooler gives it, that a failover re-points.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

/// Forwards each new connection to the loopback port it points at now; moving it leaves the
/// connections already open where they were (they die with their server).
pub struct Endpoint {
    port: u16,
    target: Arc<AtomicU16>,
    forwarder: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Listens on a free loopback port, forwarding to `target`.
    pub async fn start(target: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let target = Arc::new(AtomicU16::new(target));
        let to = Arc::clone(&target);
        let forwarder = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let port = to.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Ok(Self { port, target, forwarder })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on, new connections go to `port`.
    pub fn move_to(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}
