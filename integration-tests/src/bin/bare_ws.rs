//! `bare-ws-server`: the smallest WebSocket session server actix-web-actors makes, built from
//! the workspace's lock file, so the fleet benchmark can print its memory per idle session
//! beside the factory server's. One actor per socket with the same heartbeat as a device
//! session (a ping every 5 s, gone after 15 s of silence) and nothing else.
//!
//! `bare-ws-server [BIND]` (default `127.0.0.1:0`) prints `bare-ws-server listening on URL`.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

struct Session {
    last_heard: Instant,
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.last_heard.elapsed() > CLIENT_TIMEOUT {
                ctx.stop();
                return;
            }
            ctx.ping(b"");
        });
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Ping(bytes)) => ctx.pong(&bytes),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(_) => {}
            Err(_) => ctx.stop(),
        }
    }
}

async fn socket(req: HttpRequest, stream: web::Payload) -> Result<HttpResponse, actix_web::Error> {
    ws::start(
        Session {
            last_heard: Instant::now(),
        },
        &req,
        stream,
    )
}

fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    actix_web::rt::System::new().block_on(async move {
        let server =
            HttpServer::new(|| App::new().route("/ws", web::get().to(socket))).bind(&bind)?;
        for addr in server.addrs() {
            println!("bare-ws-server listening on http://{addr}");
        }
        server.run().await
    })
}
