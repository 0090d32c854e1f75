//! A handle on the socket under each HTTP connection, so that a handler can cut a connection
//! whose peer stopped reading.
//!
//! actix-http stops polling a response body while its write buffer is full, so a peer that
//! never reads keeps its connection, and everything buffered for it, forever: ending or
//! dropping the body is never noticed. Shutting the socket down is: the connection's pending
//! write fails at once and actix drops it. The handle is a duplicate of the connection's
//! descriptor (one more per open connection), taken when the connection is accepted, because
//! that is the only moment actix-web lends out the socket.

use std::any::Any;
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;

use actix_web::dev::Extensions;

/// The socket of the connection a request came on (`HttpRequest::conn_data`). actix drops it
/// with the connection. A route that never cuts its connections releases the duplicate
/// (`release`), so that its sockets cost one descriptor each, not two: the device sockets,
/// of which one process holds as many as its descriptor limit allows.
#[derive(Clone)]
pub struct ConnectionSocket(Rc<RefCell<Option<socket2::Socket>>>);

/// `HttpServer::on_connect`: keeps a handle on every connection, plain or TLS.
pub fn remember(connection: &dyn Any, data: &mut Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    let stream = match connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        Some(plain) => plain,
        None => match connection.downcast_ref::<Tls>() {
            // Cutting the TCP socket under a TLS session ends it just the same.
            Some(tls) => tls.get_ref().0,
            None => return,
        },
    };
    match socket2::SockRef::from(stream).try_clone() {
        Ok(socket) => {
            data.insert(ConnectionSocket(Rc::new(RefCell::new(Some(socket)))));
        }
        Err(e) => {
            tracing::warn!(error = %e, "no handle on a new connection; it cannot be cut if it stalls")
        }
    }
}

impl ConnectionSocket {
    /// A watch on the connection that does not keep its socket open.
    pub fn watch(&self) -> Connection {
        Connection(Rc::downgrade(&self.0))
    }

    /// Closes the duplicate now: the connection can no longer be cut, and holds one
    /// descriptor instead of two.
    pub fn release(&self) {
        self.0.borrow_mut().take();
    }
}

/// A connection seen from a task that outlives a request: it tells whether actix has let the
/// connection go, and cuts it if not.
pub struct Connection(Weak<RefCell<Option<socket2::Socket>>>);

/// How often `gone_within` looks.
const GONE_POLL: Duration = Duration::from_millis(50);

impl Connection {
    pub fn is_gone(&self) -> bool {
        self.0.strong_count() == 0
    }

    /// Waits up to `limit` for actix to let the connection go; answers whether it did.
    pub async fn gone_within(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        while !self.is_gone() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(GONE_POLL).await;
        }
        true
    }

    /// Resets the connection: actix's reads and writes on it fail at once, so it drops the
    /// connection with its buffers, and the peer gets a reset (not a FIN queued behind data it
    /// will never read). The socket stays open while this runs (the upgraded handle holds it),
    /// so it cannot be another connection's by then.
    pub fn abort(&self) {
        let Some(held) = self.0.upgrade() else {
            return;
        };
        let held = held.borrow();
        // Released: the route said it never cuts this connection.
        let Some(socket) = held.as_ref() else {
            return;
        };
        if let Err(e) = socket.set_linger(Some(Duration::ZERO)) {
            tracing::debug!(error = %e, "cannot set SO_LINGER before a reset");
        }
        if let Err(e) = socket.shutdown(std::net::Shutdown::Both) {
            // Already shut down or gone: either way the connection is ending.
            tracing::debug!(error = %e, "shutting down a connection");
        }
    }
}
