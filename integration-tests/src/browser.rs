//! A real headless Chromium for the dashboard's end-to-end tests, driven over WebDriver by
//! `fantoccini` through a `chromedriver` started on a free port per browser.
//!
//! The methods are blocking (each runs its WebDriver call on the browser's own runtime), so a
//! test can mix them with the harness's blocking REST client, which must not run inside an
//! async context. Nothing here downloads a browser: Debian's `chromium` and
//! `chromium-driver` must be installed (`.ci/run` installs them), and a missing one fails the
//! test with that instruction.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a `wait_*` call waits by default.
pub const WAIT: Duration = Duration::from_secs(30);

/// One browser session with its chromedriver process.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
}

/// Where screenshots go: `target/screenshots` under the workspace root, whatever
/// `CARGO_TARGET_DIR` says, so they are found beside the sources.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("target")
        .join("screenshots")
}

fn start_driver() -> (Child, u16) {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(path).is_file(),
            "{path} is missing: the dashboard tests need Debian's chromium and chromium-driver \
             (apt-get install -y chromium chromium-driver)"
        );
    }
    // A free port can be taken between the probe and chromedriver's bind; try a few.
    for _ in 0..5 {
        let port = crate::free_port();
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (child, port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("chromedriver did not start listening");
}

/// One browser at a time in the whole test binary: CI has two cores.
static BROWSER_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits for the turn to drive a browser; the turn ends when the guard is dropped.
pub fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    BROWSER_TURN.lock().unwrap_or_else(|e| e.into_inner())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a 1440×1000 window.
    pub fn start() -> Browser {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (driver, port) = start_driver();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-extensions",
                    "--no-first-run",
                    "--window-size=1440,1000",
                ],
            }),
        );
        let client = runtime
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .unwrap_or_else(|e| panic!("cannot open a Chromium session through chromedriver: {e}"));
        Browser {
            runtime,
            client: Some(client),
            driver,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("browser session")
    }

    pub fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Runs a script in the page; its `return` value as JSON.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `css` matches an element; panics after `WAIT` with the page's text.
    pub fn wait_for(&self, css: &str) {
        self.wait_until(&format!("an element `{css}`"), || self.count(css) > 0);
    }

    /// Polls `check` every 100 ms until it holds; panics after `WAIT` with the page's text.
    pub fn wait_until(&self, what: &str, check: impl FnMut() -> bool) {
        self.wait_within(WAIT, what, check);
    }

    /// Like `wait_until`, for steps that take longer than `WAIT` (a firmware rollout).
    pub fn wait_within(&self, timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            if start.elapsed() > timeout {
                let text = self.execute("return document.body.innerText;", vec![]);
                panic!(
                    "timed out after {timeout:?} waiting for {what}; the page shows:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> usize {
        self.execute(
            "return document.querySelectorAll(arguments[0]).length;",
            vec![json!(css)],
        )
        .as_u64()
        .unwrap_or(0) as usize
    }

    /// The visible text of the first element matching `css`, "" when there is none.
    pub fn text(&self, css: &str) -> String {
        self.execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            vec![json!(css)],
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Clicks the first element matching `css` as a person would (scrolled into view; an
    /// element covered by a dialog cannot be clicked).
    pub fn click(&self, css: &str) {
        self.wait_for(css);
        self.runtime
            .block_on(async { self.client().find(Locator::Css(css)).await?.click().await })
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types `text` into the first element matching `css` (after clearing it). For a file
    /// input, `text` is the file's path.
    pub fn type_into(&self, css: &str, text: &str) {
        self.wait_for(css);
        self.runtime
            .block_on(async {
                let element = self.client().find(Locator::Css(css)).await?;
                if element.attr("type").await?.as_deref() != Some("file") {
                    element.clear().await?;
                }
                element.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Chooses the option with `value` in the first `<select>` matching `css`.
    pub fn select(&self, css: &str, value: &str) {
        self.wait_for(css);
        self.runtime
            .block_on(async {
                self.client()
                    .find(Locator::Css(css))
                    .await?
                    .select_by_value(value)
                    .await
            })
            .unwrap_or_else(|e| panic!("select {value} in {css}: {e}"));
    }

    /// Writes a PNG of the window to `target/screenshots/<name>.png` and answers its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
