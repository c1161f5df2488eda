//! The HTTP server: accepts connections on the listener and serves each with hyper's HTTP/1 over
//! the router, until told to stop, then lets the open connections finish (graceful shutdown).
//!
//! It replaces `axum::serve` for one reason: a header line that is not valid HTTP (a control
//! character in a value) is dropped here (`ignore_invalid_headers`) instead of failing the whole
//! request with hyper's empty 400, so the router answers it, with the API's JSON error shape
//! (e.g. a webhook whose delivery id held a control character: "no usable delivery id").

use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The server's stop token, seen by every request (an [`Extension`]): answers that never end by
/// themselves (`GET /api/v1/events`) end when it is cancelled, so that the graceful shutdown
/// does not wait for them.
#[derive(Debug, Clone)]
pub struct Stopping(pub CancellationToken);

/// Serves `router` on `listener` until `stop` is cancelled, then waits for the connections in
/// flight to end (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // The timer bounds how long a client may take to send a request's head (30 s by default).
    http1.ignore_invalid_headers(true).timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let router = router.layer(Extension(Stopping(stop.clone())));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener itself is fine.
                Err(e) if is_per_connection(&e) => {
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
            _ = stop.cancelled() => break,
        };
        // Answers are small and written whole: no reason to wait for more bytes (Nagle).
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = http1.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("HTTP connection ended with an error: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Errors of `accept` that concern one connection or a passing shortage, not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
