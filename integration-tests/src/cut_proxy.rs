//! A TCP proxy that cuts one download in the middle: it forwards every connection to the
//! server both ways (HTTP and WebSocket alike), and the first connection whose request names
//! `cut_path` is closed after `cut_after` bytes of the answer, as a dropped uplink would. A
//! blind proxy does the same to https, where it cannot read the path (`start_blind`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct CutProxy {
    /// `http://127.0.0.1:<port>`: give this to the agent as its server URL.
    pub url: String,
    cut_done: Arc<AtomicBool>,
    /// Bytes of the cut answer that reached the client, headers included.
    pub forwarded_before_cut: Arc<AtomicU64>,
}

impl CutProxy {
    /// Proxies to `upstream` (`http://host:port`).
    pub fn start(upstream: &str, cut_path: &str, cut_after: u64) -> CutProxy {
        Self::start_inner(upstream, Some(cut_path.to_owned()), cut_after)
    }

    /// Proxies to an https `upstream` without reading the encrypted requests: the first
    /// connection whose answer passes `cut_after` bytes is cut, so `cut_after` must be more
    /// than any other connection carries (a WebSocket session, an API call) and less than the
    /// download to cut.
    pub fn start_blind(upstream: &str, cut_after: u64) -> CutProxy {
        Self::start_inner(upstream, None, cut_after)
    }

    fn start_inner(upstream: &str, cut_path: Option<String>, cut_after: u64) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let scheme = if cut_path.is_some() { "http" } else { "https" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let upstream = upstream
            .strip_prefix(&format!("{scheme}://"))
            .expect("upstream URL of the proxy's scheme")
            .trim_end_matches('/')
            .to_owned();
        let cut_done = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (done, fwd, path) = (cut_done.clone(), forwarded.clone(), cut_path);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (done, fwd, path) = (done.clone(), fwd.clone(), path.clone());
                std::thread::spawn(move || {
                    relay(client, server, path.as_deref(), cut_after, &done, &fwd)
                });
            }
        });
        CutProxy {
            url,
            cut_done,
            forwarded_before_cut: forwarded,
        }
    }

    /// Whether the cut happened.
    pub fn has_cut(&self) -> bool {
        self.cut_done.load(Ordering::SeqCst)
    }
}

fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    cut_path: Option<&str>,
    cut_after: u64,
    done: &AtomicBool,
    forwarded: &AtomicU64,
) {
    // The request's first bytes decide whether this connection is the one to cut.
    let mut first = vec![0u8; 8192];
    let n = match client.read(&mut first) {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    let head = String::from_utf8_lossy(&first[..n]).into_owned();
    // Blind (TLS): any connection may be the one; it is chosen when it passes `cut_after`.
    let mut cut = match cut_path {
        Some(path) => {
            head.starts_with("GET ")
                && head.contains(path)
                && done
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
        }
        None => false,
    };
    let blind = cut_path.is_none();
    if server.write_all(&first[..n]).is_err() {
        return;
    }
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let upward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0u64;
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if blind && !cut && sent + n as u64 >= cut_after {
            cut = done
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
        }
        let n = if cut {
            (n as u64).min(cut_after - sent) as usize
        } else {
            n
        };
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if cut && sent >= cut_after {
            forwarded.store(sent, Ordering::SeqCst);
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = upward.join();
}
