//! `factory-server firmware keygen|sign|upload|rotate-keys`: a release signing key, a
//! release's signature (through `release_signing::sign_release`, the one manifest builder),
//! its upload to the running server's REST route, whose checks are the server's own, and a
//! signed change of the keys agents trust.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, SubsecRound as _, Utc};
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::release_signing::{self, ReleaseManifest, SignedRelease};

#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// Writes a new Ed25519 signing key (`<name>.pem`, mode 0600) and its public key
    /// (`<name>.pub`, for --firmware-trusted-keys), and prints the public key.
    Keygen {
        /// Directory to write the two files into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        #[arg(long, default_value = "firmware-signing")]
        name: String,
    },
    /// Signs an artifact and prints `signatureBase64`, `signatureExpiresAt` and what they cover
    /// as JSON.
    Sign(SignArgs),
    /// Uploads an artifact to the running server (signed on the way with --key).
    Upload {
        #[command(flatten)]
        release: SignArgs,
        /// `signatureBase64` and `signatureExpiresAt` made before, as `firmware sign` prints
        /// them, instead of --key.
        #[arg(long, conflicts_with = "key")]
        signature_file: Option<PathBuf>,
        /// The release channel.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// The name it is stored and served under [default: the artifact's file name].
        #[arg(long)]
        filename: Option<String>,
        /// The server [default: http://<bind>].
        #[arg(long)]
        url: Option<String>,
        /// A CA file for an https server (besides the platform's roots).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// The ADMIN user the upload is made (and audited) as.
        #[arg(long = "as", default_value = crate::api::users::FIRST_ADMIN)]
        as_user: String,
    },
    /// Signs a change of the keys agents trust with a key they trust now, and prints the
    /// `rotate_firmware_keys` command to dispatch (to a device, a group or every device).
    RotateKeys {
        /// A key the agents trust today (`firmware keygen`'s `.pem`).
        #[arg(long)]
        key: PathBuf,
        /// Public keys to trust from now on (base64, as `firmware keygen` prints them).
        #[arg(long)]
        add: Vec<String>,
        /// Public keys to stop trusting.
        #[arg(long)]
        retire: Vec<String>,
        /// Above every rotation sent before: agents apply only a higher sequence.
        #[arg(long)]
        sequence: u64,
        /// How long the signed message may still be applied.
        #[arg(long, default_value_t = 30)]
        expires_in_days: i64,
    },
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The release artifact.
    pub artifact: PathBuf,
    /// The release's semantic version.
    #[arg(long)]
    pub version: String,
    /// The project it belongs to (boards' OTA routes serve it under this name).
    #[arg(long, default_value = protocol::firmware::AGENT_PROJECT)]
    pub project: String,
    /// The signing key (`firmware keygen`'s `.pem`).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// How long the signature stays valid.
    #[arg(long, default_value_t = 90)]
    pub expires_in_days: i64,
    /// Let this release replace a newer version on devices (signed; a deployment must also
    /// ask for the downgrade).
    #[arg(long)]
    pub allow_downgrade: bool,
    /// The release's security floor: devices that accept it never stage a lower one again.
    #[arg(long)]
    pub security_floor: Option<u64>,
}

impl SignArgs {
    fn sign(&self) -> anyhow::Result<Option<SignedRelease>> {
        let Some(key_file) = &self.key else {
            return Ok(None);
        };
        let key = release_signing::load_key(key_file)?;
        let expires_at = Utc::now() + chrono::Duration::days(self.expires_in_days);
        let manifest = ReleaseManifest {
            allow_downgrade: self.allow_downgrade,
            security_floor: self.security_floor,
            ..ReleaseManifest::of_file(&self.project, &self.version, &self.artifact, expires_at)?
        };
        Ok(Some(release_signing::sign_release(&key, &manifest)))
    }
}

pub fn run(command: FirmwareCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        FirmwareCommand::Keygen { out_dir, name } => {
            let (pem, public) = release_signing::generate_key()?;
            let private = out_dir.join(format!("{name}.pem"));
            if private.exists() {
                anyhow::bail!("{} exists; a key is never overwritten", private.display());
            }
            crate::auth::write_secret_file(&private, &pem)
                .with_context(|| format!("cannot write {}", private.display()))?;
            let public_file = out_dir.join(format!("{name}.pub"));
            std::fs::write(&public_file, format!("{public}\n"))
                .with_context(|| format!("cannot write {}", public_file.display()))?;
            eprintln!(
                "wrote {} (keep it secret) and {}; trust the public key with --firmware-trusted-keys:",
                private.display(),
                public_file.display()
            );
            println!("{public}");
        }
        FirmwareCommand::Sign(args) => {
            let signed = args
                .sign()?
                .ok_or_else(|| anyhow::anyhow!("--key is required to sign"))?;
            println!("{}", serde_json::to_string_pretty(&signed)?);
        }
        FirmwareCommand::Upload {
            release,
            signature_file,
            channel,
            filename,
            url,
            ca_file,
            as_user,
        } => {
            let signature = match signature_file {
                Some(file) => Some(read_signature(&file)?),
                None => release.sign()?.map(|s| Signature {
                    base64: s.signature_base64,
                    expires_at: s.signature_expires_at,
                    allow_downgrade: s.allow_downgrade,
                    security_floor: s.security_floor,
                }),
            };
            let filename = match filename {
                Some(name) => name,
                None => file_name(&release.artifact)?,
            };
            let token = admin_token(config, &as_user)?;
            let base = url.unwrap_or_else(|| format!("http://{}", config.bind));
            let mut query = vec![
                ("version", release.version.clone()),
                ("project", release.project.clone()),
                ("filename", filename),
                ("channel", channel),
            ];
            if let Some(signature) = signature {
                query.push(("signatureBase64", signature.base64));
                query.push(("signatureExpiresAt", signature.expires_at.to_rfc3339()));
                if signature.allow_downgrade {
                    query.push(("allowDowngrade", "true".to_owned()));
                }
                if let Some(floor) = signature.security_floor {
                    query.push(("securityFloor", floor.to_string()));
                }
            }
            let answer = upload(&base, ca_file.as_deref(), &token, &query, &release.artifact)?;
            println!("{answer}");
        }
        FirmwareCommand::RotateKeys {
            key,
            add,
            retire,
            sequence,
            expires_in_days,
        } => {
            let command = rotation_command(&key, add, retire, sequence, expires_in_days)?;
            println!("{}", serde_json::to_string_pretty(&command)?);
        }
    }
    Ok(())
}

/// The `rotate_firmware_keys` command, signed with `key`.
fn rotation_command(
    key: &Path,
    add: Vec<String>,
    retire: Vec<String>,
    sequence: u64,
    expires_in_days: i64,
) -> anyhow::Result<serde_json::Value> {
    for public in add.iter().chain(&retire) {
        protocol::signing::parse_public_key(public)
            .map_err(|e| anyhow::anyhow!("`{public}`: {e}"))?;
    }
    if add.is_empty() && retire.is_empty() {
        anyhow::bail!("name a key to --add or to --retire");
    }
    let key = release_signing::load_key(key)?;
    let expires_at = (Utc::now() + chrono::Duration::days(expires_in_days)).trunc_subsecs(0);
    let rotation = protocol::firmware::KeyRotation {
        add,
        retire,
        sequence,
        expires_unix: expires_at.timestamp(),
    };
    let signature = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        key.sign(&rotation.bytes()).as_ref(),
    );
    Ok(serde_json::json!({
        "type": "rotate_firmware_keys",
        "add": rotation.add,
        "retire": rotation.retire,
        "sequence": rotation.sequence,
        "expiresAt": expires_at,
        "signatureBase64": signature,
    }))
}

/// A release signature and what it covers besides the artifact.
struct Signature {
    base64: String,
    expires_at: DateTime<Utc>,
    allow_downgrade: bool,
    security_floor: Option<u64>,
}

fn file_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{}: no file name", path.display()))
}

fn read_signature(file: &Path) -> anyhow::Result<Signature> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Signed {
        signature_base64: String,
        signature_expires_at: DateTime<Utc>,
        #[serde(default)]
        allow_downgrade: bool,
        #[serde(default)]
        security_floor: Option<u64>,
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let s: Signed = serde_json::from_str(&text)
        .with_context(|| format!("{}: not `firmware sign` output", file.display()))?;
    Ok(Signature {
        base64: s.signature_base64,
        expires_at: s.signature_expires_at,
        allow_downgrade: s.allow_downgrade,
        security_floor: s.security_floor,
    })
}

/// A five-minute token of an enabled ADMIN, issued with the server's own JWT secret: this
/// runs on the server's host with its settings, so it may act as one of its admins, and the
/// upload is audited under that name.
fn admin_token(config: &Config, username: &str) -> anyhow::Result<String> {
    let db = crate::admin::open(config)?;
    let user = db
        .run_blocking(|conn| Ok(crate::store::users::find_by_username(conn, username)?))
        .map_err(|e| anyhow::anyhow!(e.message))?
        .ok_or_else(|| anyhow::anyhow!("no user named {username}"))?;
    let role = user.role().map_err(|e| anyhow::anyhow!(e.message))?;
    if user.disabled || role != protocol::rest::Role::Admin {
        anyhow::bail!("{username} is not an enabled ADMIN");
    }
    let secret =
        crate::auth::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
    let issued = crate::auth::JwtKeys::new(&secret)
        .issue_user(&user.id, role, user.token_version, 300)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    Ok(issued.token)
}

/// Streams the artifact to `POST /api/v1/firmware/releases` and answers the server's JSON.
fn upload(
    base: &str,
    ca_file: Option<&Path>,
    token: &str,
    query: &[(&str, String)],
    artifact: &Path,
) -> anyhow::Result<String> {
    let file = std::fs::File::open(artifact)
        .with_context(|| format!("cannot open {}", artifact.display()))?;
    let size = file.metadata()?.len();
    let tls = Arc::new(tls::client_config(ca_file)?);
    let query = encode_query(query);
    let url = format!(
        "{}/api/v1/firmware/releases?{query}",
        base.trim_end_matches('/')
    );
    actix_web::rt::System::new().block_on(async move {
        let client = cloud::https_client(Some(&tls), Some(std::time::Duration::from_secs(3600)));
        // The artifact in chunks read as they are sent: releases may be hundreds of MiB.
        let chunks = futures_util::stream::unfold(file, |mut file| async move {
            use std::io::Read as _;
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        Ok::<_, std::io::Error>(actix_web::web::Bytes::from(buf)),
                        file,
                    ))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        let mut response = client
            .post(&url)
            .bearer_auth(token)
            .insert_header(("Content-Length", size.to_string()))
            .send_stream(chunks)
            .await
            .map_err(|e| anyhow::anyhow!("upload to {base}: {}", cloud::transport_reason(&e)))?;
        let body = response.body().limit(1024 * 1024).await?;
        let text = String::from_utf8_lossy(&body).into_owned();
        if !response.status().is_success() {
            anyhow::bail!(
                "the server refused the upload ({}): {text}",
                response.status()
            );
        }
        Ok(text)
    })
}

/// `key=value&…` with each value percent-encoded.
fn encode_query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let encoded: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={encoded}")
        })
        .collect::<Vec<_>>()
        .join("&")
}
