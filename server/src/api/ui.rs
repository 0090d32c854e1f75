//! The web dashboard's files (`server/web/`), compiled into the binary and served at `/` and
//! `/assets/…` with an ETag, `Cache-Control: no-cache` and a `Content-Security-Policy` that
//! allows nothing but this origin.
//!
//! The files are plain HTML, CSS and ES modules: there is no build step, and nothing is
//! fetched from elsewhere, so the dashboard works on a line without internet. Embedding them
//! keeps the server one file to install, and their ETags are fixed for the life of the binary.

use std::collections::HashMap;
use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use include_dir::{include_dir, Dir};

use crate::error::{ApiError, ApiResult, ErrorCode};

static WEB: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/web");

/// Only this origin, for scripts, styles, images, fetches and the dashboard socket. Without
/// `'unsafe-inline'` an injected `<script>` or `style=` attribute does nothing, so a value that
/// escaped the dashboard's escaping still could not run. `frame-ancestors` keeps the dashboard
/// out of other sites' frames (clickjacking of its buttons). No `connect-src` is needed for the
/// dashboard socket: under CSP level 3, `'self'` matches `ws:`/`wss:` to the same host, which
/// Chromium implements (the browser tests connect under this policy).
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file, ready to serve.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: String,
}

/// Every embedded file by its path under `web/`, with its ETag computed once.
fn assets() -> &'static HashMap<&'static str, Asset> {
    static ASSETS: OnceLock<HashMap<&'static str, Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let mut map = HashMap::new();
        let mut dirs = vec![&WEB];
        while let Some(dir) = dirs.pop() {
            for file in dir.files() {
                let Some(path) = file.path().to_str() else {
                    continue;
                };
                let digest = ring::digest::digest(&ring::digest::SHA256, file.contents());
                let hex = crate::store::firmware::hex(&digest.as_ref()[..16]);
                map.insert(
                    path,
                    Asset {
                        body: file.contents(),
                        content_type: content_type(path),
                        etag: format!("\"{hex}\""),
                    },
                );
            }
            dirs.extend(dir.dirs());
        }
        map
    })
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Whether `If-None-Match` names the current ETag (or `*`).
fn not_modified(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

fn serve(req: &HttpRequest, path: &str) -> ApiResult<HttpResponse> {
    let asset = assets()
        .get(path)
        .ok_or_else(|| ApiError::not_found(ErrorCode::NotFound, "no such file"))?;
    let unchanged = not_modified(req, &asset.etag);
    let mut response = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, asset.etag.clone()))
        // Revalidate every time: a new server version must never run with yesterday's
        // modules, and a revalidation costs one 304.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if unchanged {
        return Ok(response.finish());
    }
    Ok(response.content_type(asset.content_type).body(asset.body))
}

/// `GET /`: the dashboard (a single page; its pages are `#/…` routes).
pub async fn index(req: HttpRequest) -> ApiResult<HttpResponse> {
    serve(&req, "index.html")
}

/// `GET /assets/{path}`: a file of `web/assets/`. Only embedded paths exist, so `..` or an
/// absolute path finds nothing.
pub async fn asset(req: HttpRequest, path: web::Path<String>) -> ApiResult<HttpResponse> {
    serve(&req, &format!("assets/{}", path.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as web_test;
    use actix_web::App;

    fn app() -> App<
        impl actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
            InitError = (),
        >,
    > {
        App::new()
            .route("/", web::get().to(index))
            .route("/assets/{path:.*}", web::get().to(asset))
    }

    fn header_of(resp: &actix_web::dev::ServiceResponse, name: header::HeaderName) -> String {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    #[actix_rt::test]
    async fn root_serves_the_app_with_csp_and_etag() {
        let app = web_test::init_service(app()).await;
        let resp =
            web_test::call_service(&app, web_test::TestRequest::get().uri("/").to_request()).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header_of(&resp, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        let csp = header_of(&resp, header::CONTENT_SECURITY_POLICY);
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(header_of(&resp, header::ETAG).starts_with('"'));
        let body = web_test::read_body(resp).await;
        let html = std::str::from_utf8(&body).unwrap();
        assert!(html.contains(r#"<script type="module" src="/assets/js/app.js">"#));
    }

    #[actix_rt::test]
    async fn an_asset_is_not_sent_again_for_its_etag() {
        let app = web_test::init_service(app()).await;
        let first = web_test::call_service(
            &app,
            web_test::TestRequest::get()
                .uri("/assets/js/app.js")
                .to_request(),
        )
        .await;
        assert_eq!(first.status(), 200);
        assert_eq!(
            header_of(&first, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        assert!(header_of(&first, header::CONTENT_SECURITY_POLICY).contains("default-src 'self'"));
        let etag = header_of(&first, header::ETAG);
        assert_eq!(etag.len(), 34, "{etag}");

        let again = web_test::call_service(
            &app,
            web_test::TestRequest::get()
                .uri("/assets/js/app.js")
                .insert_header((header::IF_NONE_MATCH, etag.clone()))
                .to_request(),
        )
        .await;
        assert_eq!(again.status(), 304);
        assert_eq!(header_of(&again, header::ETAG), etag);
        assert!(web_test::read_body(again).await.is_empty());

        // Another file's tag is no match.
        let stale = web_test::call_service(
            &app,
            web_test::TestRequest::get()
                .uri("/assets/app.css")
                .insert_header((header::IF_NONE_MATCH, etag))
                .to_request(),
        )
        .await;
        assert_eq!(stale.status(), 200);
        assert_eq!(
            header_of(&stale, header::CONTENT_TYPE),
            "text/css; charset=utf-8"
        );
    }

    #[actix_rt::test]
    async fn unknown_and_escaping_paths_are_404() {
        let app = web_test::init_service(app()).await;
        for uri in [
            "/assets/nope.js",
            "/assets/../Cargo.toml",
            "/assets/%2e%2e/index.html",
            "/assets/",
            "/assets/js",
        ] {
            let resp =
                web_test::call_service(&app, web_test::TestRequest::get().uri(uri).to_request())
                    .await;
            assert_eq!(resp.status(), 404, "{uri}");
            let body: serde_json::Value = web_test::read_body_json(resp).await;
            assert_eq!(body["error"]["code"], "not_found", "{uri}");
        }
    }

    /// Every relative `import … from './x.js'` of every module names an embedded file, so a
    /// renamed module cannot leave the dashboard half-loaded.
    #[test]
    fn every_module_import_resolves() {
        let assets = assets();
        let mut checked = 0;
        for (path, asset) in assets.iter().filter(|(p, _)| p.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).unwrap();
            let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            for spec in text
                .split(['\'', '"'])
                .filter(|s| (s.starts_with("./") || s.starts_with("../")) && s.ends_with(".js"))
            {
                let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
                for part in spec.split('/') {
                    match part {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        p => parts.push(p),
                    }
                }
                let target = parts.join("/");
                assert!(
                    assets.contains_key(target.as_str()),
                    "{path} imports {spec}, which is not embedded"
                );
                checked += 1;
            }
        }
        assert!(checked > 10, "only {checked} imports found");
    }
}
