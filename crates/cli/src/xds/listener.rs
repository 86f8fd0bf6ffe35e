//! The connections `serve --xds` accepts. Each proxy holds one open, so the open-file limit is
//! the fleet serve can hold: it is raised to the system's ceiling at start, and connections stop
//! short of it, keeping files free to read the next policy (a change must never be refused for
//! "Too many open files"). A connection past that is closed at once: the proxy retries, at
//! another serve instance or later, instead of waiting unaccepted while serve spins on it.
//!
//! Accepted sockets get TCP_NODELAY (answers are small and must not wait for an ACK) and TCP
//! keepalive (a proxy that vanished without closing is found and its session ended).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Files kept for everything that is not a proxy's connection: the policy and the files it
/// reads, the TLS files, the listening socket, standard streams, the runtime's own.
const RESERVED_FILES: u64 = 64;

/// TCP keepalive: first probe after this idle time, then every `KEEPALIVE_INTERVAL`, the peer
/// given up after `KEEPALIVE_RETRIES` unanswered probes (about a minute in all).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// How often a refusal at the limit is logged, with the count since the last line.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How many connections fit in an open-file limit.
pub fn capacity(file_limit: u64) -> usize {
    usize::try_from(file_limit.saturating_sub(RESERVED_FILES).max(1)).unwrap_or(usize::MAX)
}

/// An accepted connection, holding its place among the `capacity` until it closes.
pub struct Admitted {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
}

/// The connections accepted on a listener, at most `capacity` open at once; dropping it closes
/// the listening socket at once (a restart with new certificates binds the same address).
pub struct Incoming {
    listener: TcpListener,
    places: Arc<Semaphore>,
    capacity: usize,
    refused: Refused,
    /// Out of files: the next accept waits for this.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Incoming {
    pub fn new(listener: TcpListener, capacity: usize) -> Incoming {
        Incoming { listener, places: Arc::new(Semaphore::new(capacity)), capacity, refused: Refused::default(), pause: None }
    }
}

impl Stream for Incoming {
    type Item = Result<Admitted, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(pause) = &mut this.pause {
                std::task::ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            let stream = match std::task::ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _)) => stream,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                    // Out of files for a reason outside serve's count (the system's table): the
                    // connection stays queued; try again shortly rather than spin on it.
                    this.refused.note(&format!("cannot accept a connection: {e}"));
                    this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                    continue;
                }
                Err(_) => continue,
            };
            let Ok(place) = Arc::clone(&this.places).try_acquire_owned() else {
                drop(stream);
                this.refused.note(&format!("holds its limit of {} connections: closed a new one", this.capacity));
                continue;
            };
            configure(&stream);
            return Poll::Ready(Some(Ok(Admitted { stream, _place: place })));
        }
    }
}

fn configure(stream: &TcpStream) {
    // Best effort: a socket that refuses an option still serves.
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Refusals at the limit, logged at most every `REPORT_EVERY` with how many since.
#[derive(Default)]
struct Refused {
    count: u64,
    reported: Option<Instant>,
}

impl Refused {
    fn note(&mut self, what: &str) {
        self.count += 1;
        if self.reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
            eprintln!("meshward serve: {what} ({} since the last report)", self.count);
            self.count = 0;
            self.reported = Some(Instant::now());
        }
    }
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_keeps_files_for_reading_the_policy() {
        assert_eq!(capacity(1024), 960);
        assert_eq!(capacity(64), 1, "one connection even at a tiny limit");
        assert_eq!(capacity(0), 1);
    }
}
