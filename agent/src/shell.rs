//! Shell templates for `exec_shell`: a compiled-in allow-list of named programs with typed
//! parameters, and the runner shared with `reboot_os` / `shutdown_os`. Plain code: the
//! shell-template actor (`actors/shell.rs`) is what runs it.
//!
//! A template is a program path and an argument list; each argument is either fixed text or
//! exactly one parameter value. Programs are started directly (execve-style, never through a
//! shell), with an empty environment but for `PATH` and `LANG`, no standard input, a timeout
//! and a cap on the output kept. A value can therefore never become a second argument or a
//! shell command; the parameter types also refuse control characters and a leading `-`, so a
//! value cannot turn into an option either.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Output kept of each stream; the rest is read and dropped so the program never blocks.
pub const MAX_OUTPUT: usize = 64 * 1024;
/// Environment given to every program.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a parameter accepts.
#[derive(Debug, Clone, Copy)]
pub enum ParamType {
    /// An absolute path.
    Path,
    /// A host name or an IPv4/IPv6 address.
    Host,
    /// A systemd unit name.
    Unit,
    /// A whole number in the range.
    Int { min: i64, max: i64 },
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: ParamType,
    /// Used when the command leaves the parameter out; `None` makes it required.
    pub default: Option<&'static str>,
}

/// One argument of a template.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Fixed(&'static str),
    Param(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub name: &'static str,
    pub program: &'static str,
    pub args: &'static [Arg],
    pub params: &'static [Param],
    pub timeout: Duration,
}

use Arg::{Fixed, Param as P};

/// The templates this agent ships.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "disk_usage",
        program: "df",
        args: &[Fixed("-h"), Fixed("--"), P("path")],
        params: &[Param {
            name: "path",
            kind: ParamType::Path,
            default: Some("/"),
        }],
        timeout: Duration::from_secs(10),
    },
    Template {
        name: "network_interfaces",
        program: "ip",
        args: &[Fixed("-brief"), Fixed("address"), Fixed("show")],
        params: &[],
        timeout: Duration::from_secs(10),
    },
    Template {
        name: "service_status",
        program: "systemctl",
        args: &[
            Fixed("status"),
            Fixed("--no-pager"),
            Fixed("--lines=20"),
            Fixed("--"),
            P("unit"),
        ],
        params: &[Param {
            name: "unit",
            kind: ParamType::Unit,
            default: Some("edge-agent"),
        }],
        timeout: Duration::from_secs(10),
    },
    Template {
        name: "ping",
        program: "ping",
        args: &[
            Fixed("-c"),
            P("count"),
            Fixed("-W"),
            Fixed("2"),
            Fixed("--"),
            P("host"),
        ],
        params: &[
            Param {
                name: "host",
                kind: ParamType::Host,
                default: None,
            },
            Param {
                name: "count",
                kind: ParamType::Int { min: 1, max: 10 },
                default: Some("3"),
            },
        ],
        timeout: Duration::from_secs(30),
    },
    Template {
        name: "journal_tail",
        program: "journalctl",
        args: &[
            Fixed("--no-pager"),
            Fixed("-n"),
            P("lines"),
            Fixed("-u"),
            P("unit"),
        ],
        params: &[
            Param {
                name: "unit",
                kind: ParamType::Unit,
                default: Some("edge-agent"),
            },
            Param {
                name: "lines",
                kind: ParamType::Int { min: 1, max: 1000 },
                default: Some("100"),
            },
        ],
        timeout: Duration::from_secs(20),
    },
];

/// Names of the shipped templates, for status frames.
pub fn names() -> Vec<&'static str> {
    TEMPLATES.iter().map(|t| t.name).collect()
}

/// Why a template was not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error("unknown template `{0}`; installed: {1}")]
    UnknownTemplate(String, String),
    #[error("template {template}: unknown parameter `{param}`")]
    UnknownParam { template: String, param: String },
    #[error("template {template}: parameter `{param}` is required")]
    MissingParam { template: String, param: String },
    #[error("template {template}: parameter `{param}` {reason}")]
    BadParam {
        template: String,
        param: String,
        reason: String,
    },
}

/// Looks a template up and builds its argument vector from `args`.
pub fn build(
    template: &str,
    args: &BTreeMap<String, Value>,
) -> Result<(&'static Template, Vec<String>), ShellError> {
    let t = TEMPLATES
        .iter()
        .find(|t| t.name == template)
        .ok_or_else(|| ShellError::UnknownTemplate(template.to_owned(), names().join(", ")))?;
    if let Some(param) = args.keys().find(|k| !t.params.iter().any(|p| p.name == *k)) {
        return Err(ShellError::UnknownParam {
            template: t.name.into(),
            param: param.clone(),
        });
    }
    let mut values: BTreeMap<&str, String> = BTreeMap::new();
    for param in t.params {
        let bad = |reason: String| ShellError::BadParam {
            template: t.name.into(),
            param: param.name.into(),
            reason,
        };
        let value = match (args.get(param.name), param.default) {
            (Some(Value::String(s)), _) => s.clone(),
            (Some(Value::Number(n)), _) => n.to_string(),
            (Some(other), _) => {
                return Err(bad(format!("must be a string or number, not {other}")))
            }
            (None, Some(default)) => default.to_owned(),
            (None, None) => {
                return Err(ShellError::MissingParam {
                    template: t.name.into(),
                    param: param.name.into(),
                })
            }
        };
        check(param.kind, &value).map_err(bad)?;
        values.insert(param.name, value);
    }
    let argv = t
        .args
        .iter()
        .map(|a| match a {
            Fixed(s) => (*s).to_owned(),
            P(name) => values.get(name).cloned().unwrap_or_default(),
        })
        .collect();
    Ok((t, argv))
}

/// Checks a value against its type. Every type refuses control characters (a newline could
/// fake a second log line or confuse a program reading lines) and a leading `-`.
fn check(kind: ParamType, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 4096 {
        return Err("is longer than 4096 bytes".into());
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters (newline, tab, NUL…)".into());
    }
    if value.starts_with('-') {
        return Err("must not start with `-`".into());
    }
    match kind {
        ParamType::Path if !value.starts_with('/') => Err("must be an absolute path".into()),
        ParamType::Path => Ok(()),
        ParamType::Host => {
            let ok = value.len() <= 253
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
            if ok {
                Ok(())
            } else {
                Err("must be a host name or an IP address".into())
            }
        }
        ParamType::Unit => {
            let ok = value.len() <= 256
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | ':'));
            if ok {
                Ok(())
            } else {
                Err("must be a systemd unit name".into())
            }
        }
        ParamType::Int { min, max } => match value.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(()),
            _ => Err(format!("must be a whole number from {min} to {max}")),
        },
    }
}

/// How a program ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finished {
    pub argv: Vec<String>,
    /// `None` when it was killed (by the timeout or a signal).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// Output for a command result: stdout, then stderr, each as the program wrote it.
    pub fn output(&self) -> String {
        let mut out = self.stdout.clone();
        if !self.stderr.is_empty() {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&self.stderr);
        }
        if self.timed_out {
            out.push_str("\n[killed: timed out]");
        }
        if self.truncated {
            out.push_str("\n[output truncated]");
        }
        out
    }
}

/// Runs `argv` (program first) without a shell. An error means it could not be started.
pub async fn run(argv: &[String], timeout: Duration) -> std::io::Result<Finished> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .env("LANG", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let collect = async {
        let (out, err) = tokio::join!(read_capped(stdout), read_capped(stderr));
        let status = child.wait().await;
        (out, err, status)
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok(((stdout, t1), (stderr, t2), status)) => Ok(Finished {
            argv: argv.to_vec(),
            exit_code: status?.code(),
            timed_out: false,
            stdout,
            stderr,
            truncated: t1 || t2,
        }),
        Err(_) => {
            // `collect` was dropped with the child: kill_on_drop ends the program.
            Ok(Finished {
                argv: argv.to_vec(),
                exit_code: None,
                timed_out: true,
                stdout: String::new(),
                stderr: String::new(),
                truncated: false,
            })
        }
    }
}

async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>) -> (String, bool) {
    let Some(mut reader) = reader else {
        return (String::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn templates_build_argument_vectors_with_defaults() {
        let (t, argv) = build("disk_usage", &args(json!({}))).unwrap();
        assert_eq!(t.program, "df");
        assert_eq!(argv, ["-h", "--", "/"]);
        let (_, argv) = build("ping", &args(json!({"host": "10.0.0.1", "count": 2}))).unwrap();
        assert_eq!(argv, ["-c", "2", "-W", "2", "--", "10.0.0.1"]);
        assert_eq!(
            names(),
            [
                "disk_usage",
                "network_interfaces",
                "service_status",
                "ping",
                "journal_tail"
            ]
        );
    }

    #[test]
    fn bad_templates_and_parameters_are_refused_with_the_reason() {
        let err = build("rm_rf", &args(json!({}))).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown template `rm_rf`"),
            "{err}"
        );
        let cases = [
            (
                "disk_usage",
                json!({"path": "/tmp\nrm -rf /"}),
                "control characters",
            ),
            ("disk_usage", json!({"path": "relative"}), "absolute path"),
            ("disk_usage", json!({"path": "-rf"}), "start with `-`"),
            ("disk_usage", json!({"path": ["/"]}), "string or number"),
            ("disk_usage", json!({"dir": "/"}), "unknown parameter `dir`"),
            ("ping", json!({}), "`host` is required"),
            ("ping", json!({"host": "a; rm -rf /"}), "host name"),
            ("ping", json!({"host": "$(reboot)"}), "host name"),
            ("ping", json!({"host": "h", "count": 11}), "from 1 to 10"),
            ("journal_tail", json!({"unit": "x y"}), "unit name"),
        ];
        for (template, a, reason) in cases {
            let err = build(template, &args(a.clone())).unwrap_err().to_string();
            assert!(err.contains(reason), "{template} {a}: {err}");
        }
    }

    #[actix::test]
    async fn a_value_stays_one_argument_and_output_is_capped() {
        let marker = crate::store::tests::temp_dir();
        let evil = format!(
            "; touch {} $(touch {}) `id`",
            marker.display(),
            marker.display()
        );
        let finished = run(&["/bin/echo".into(), evil.clone()], Duration::from_secs(5))
            .await
            .unwrap();
        assert!(finished.success());
        assert_eq!(finished.stdout, format!("{evil}\n"));
        assert!(!marker.exists(), "a shell ran the value");

        let big = run(
            &["/bin/sh".into(), "-c".into(), "yes | head -c 200000".into()],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(big.truncated);
        assert_eq!(big.stdout.len(), MAX_OUTPUT);
    }

    #[actix::test]
    async fn a_program_past_its_timeout_is_killed() {
        let started = std::time::Instant::now();
        let finished = run(&["sleep".into(), "30".into()], Duration::from_millis(300))
            .await
            .unwrap();
        assert!(finished.timed_out);
        assert_eq!(finished.exit_code, None);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            run(&["/nonexistent/program".into()], Duration::from_secs(1))
                .await
                .is_err()
        );
    }
}
