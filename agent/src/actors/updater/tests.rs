//! Tests of the updater: version and signature checks, download, resume and staging.

use ring::signature::{Ed25519KeyPair, KeyPair};

use super::*;
use crate::firmware::*;
use crate::store::tests::temp_dir;
use base64::Engine;
use chrono::DateTime;
use protocol::firmware::{manifest_bytes, AGENT_PROJECT};

fn key_pair(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
}

fn public(pair: &Ed25519KeyPair) -> [u8; 32] {
    pair.public_key().as_ref().try_into().unwrap()
}

fn policy(keys: Vec<[u8; 32]>) -> Policy {
    Policy {
        staging_dir: temp_dir(),
        trusted_keys: keys,
        require_signature: false,
        allow_unsigned: false,
        allow_downgrade: false,
        floor: 0,
        running: semver::Version::new(1, 0, 0),
        server_url: "http://factory:8080".into(),
    }
}

fn request(version: &str) -> UpdateRequest {
    UpdateRequest {
        command_id: "c1".into(),
        version: version.into(),
        url: "http://127.0.0.1:9/a".into(),
        sha256: "ab".repeat(32),
        size: 10,
        signature_base64: None,
        signature_expires_at: None,
        allow_downgrade: false,
        project: AGENT_PROJECT.into(),
        manifest_allow_downgrade: false,
        security_floor: None,
    }
}

fn signed(pair: &Ed25519KeyPair, mut r: UpdateRequest, expires: DateTime<Utc>) -> UpdateRequest {
    let manifest = manifest_of(&r, expires).bytes();
    r.signature_base64 =
        Some(base64::engine::general_purpose::STANDARD.encode(pair.sign(&manifest).as_ref()));
    r.signature_expires_at = Some(expires);
    r
}

#[test]
fn manifest_matches_the_server_layout() {
    assert_eq!(
            String::from_utf8(manifest_bytes(AGENT_PROJECT, "1.2.3", "ab", 10, 1_900_000_000)).unwrap(),
            "factory-firmware-manifest-v1\nproject=edge\nversion=1.2.3\nsha256=ab\nsize=10\nexpires=1900000000\n"
        );
}

const UNSIGNED: Verified = Verified {
    verified: false,
    allow_downgrade: false,
    floor: 0,
};

#[test]
fn downgrades_need_the_signed_permission_and_the_command_or_the_local_setting() {
    let mut p = policy(vec![]);
    assert!(check_version(&p, "1.0.0", false, UNSIGNED).is_ok());
    assert!(check_version(&p, "1.0.1", false, UNSIGNED).is_ok());
    let err = check_version(&p, "0.9.9", false, UNSIGNED).unwrap_err();
    assert!(err.to_string().contains("downgrade"), "{err}");
    assert!(matches!(
        check_version(&p, "one", true, UNSIGNED),
        Err(UpdateError::BadVersion(_))
    ));
    // The command alone no longer suffices: nothing signed says so.
    let err = check_version(&p, "0.9.9", true, UNSIGNED).unwrap_err();
    assert!(err.to_string().contains("alone does not suffice"), "{err}");
    let permitted = Verified {
        verified: true,
        allow_downgrade: true,
        floor: 0,
    };
    assert!(check_version(&p, "0.9.9", true, permitted).is_ok());
    assert!(check_version(&p, "0.9.9", false, permitted).is_err());
    p.allow_downgrade = true;
    assert!(check_version(&p, "0.9.9", false, UNSIGNED).is_ok());
    // The running version is the installed one, not the crate's.
    p.allow_downgrade = false;
    p.running = parse_running("7.0.0");
    assert!(check_version(&p, "6.9.0", true, UNSIGNED).is_err());
    assert!(check_version(&p, "6.9.0", true, permitted).is_ok());
}

#[test]
fn a_release_below_the_accepted_floor_or_of_another_project_is_refused() {
    let mut p = policy(vec![]);
    p.floor = 3;
    let at = |floor| Verified {
        verified: true,
        allow_downgrade: false,
        floor,
    };
    let r = request("1.1.0");
    assert!(check_floor(&p, &r, at(3)).is_ok());
    assert!(check_floor(&p, &r, at(4)).is_ok());
    let err = check_floor(&p, &r, at(2)).unwrap_err();
    assert!(
        err.to_string().contains("security floor 2 is below 3"),
        "{err}"
    );
    // Unsigned counts as floor 0, even with the local downgrade setting on.
    p.allow_downgrade = true;
    assert!(check_floor(&p, &r, UNSIGNED).is_err());
    let mut other = request("1.1.0");
    other.project = "fan".into();
    assert!(matches!(
        check_project(&other),
        Err(UpdateError::OtherProject(_))
    ));
    assert!(check_project(&r).is_ok());
}

#[test]
fn a_path_url_is_fetched_from_the_configured_server() {
    let path = "/api/v1/firmware/releases/r-1/artifact";
    assert_eq!(
        resolve_url("http://factory:8080", path).unwrap(),
        "http://factory:8080/api/v1/firmware/releases/r-1/artifact"
    );
    assert_eq!(
        resolve_url("https://proxy/base/", path).unwrap(),
        "https://proxy/base/api/v1/firmware/releases/r-1/artifact"
    );
    let absolute = "https://cdn.example/edge-2.0.0";
    assert_eq!(
        resolve_url("http://factory:8080", absolute).unwrap(),
        absolute
    );
    for bad in ["//evil.example/x", "api/v1/x", "ftp://host/x", ""] {
        assert!(
            matches!(
                resolve_url("http://factory:8080", bad),
                Err(UpdateError::BadUrl(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn signatures_verify_with_trusted_keys_only_and_before_expiry() {
    let signer = key_pair(1);
    let stranger = key_pair(2);
    let now = Utc::now();
    let later = now + chrono::Duration::hours(1);
    let p = policy(vec![public(&signer)]);

    assert!(
        check_signature(&p, &signed(&signer, request("1.1.0"), later), now)
            .unwrap()
            .verified
    );
    // The rollback fields are read from the signed manifest only.
    let mut floored = request("1.1.0");
    floored.security_floor = Some(5);
    floored.manifest_allow_downgrade = true;
    let verified = check_signature(&p, &signed(&signer, floored.clone(), later), now).unwrap();
    assert_eq!((verified.floor, verified.allow_downgrade), (5, true));
    let raised = signed(&signer, floored, later);
    let mut lowered = raised.clone();
    lowered.security_floor = Some(1);
    assert!(check_signature(&p, &lowered, now).is_err());
    let err = check_signature(&p, &signed(&stranger, request("1.1.0"), later), now);
    assert!(matches!(err, Err(UpdateError::BadSignature(_))));
    // Any change to what the manifest covers breaks the signature.
    let mut tampered = signed(&signer, request("1.1.0"), later);
    tampered.size = 11;
    assert!(check_signature(&p, &tampered, now).is_err());
    let mut no_expiry = signed(&signer, request("1.1.0"), later);
    no_expiry.signature_expires_at = None;
    assert!(check_signature(&p, &no_expiry, now).is_err());
    let expired = signed(
        &signer,
        request("1.1.0"),
        now - chrono::Duration::seconds(1),
    );
    let err = check_signature(&p, &expired, now).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn unsigned_releases_are_refused_while_a_key_is_trusted_unless_allowed() {
    let signer = key_pair(1);
    let mut p = policy(vec![]);
    assert!(
        !check_signature(&p, &request("1.1.0"), Utc::now())
            .unwrap()
            .verified
    );
    p.require_signature = true;
    assert!(matches!(
        check_signature(&p, &request("1.1.0"), Utc::now()),
        Err(UpdateError::SignatureRequired(_))
    ));
    let later = Utc::now() + chrono::Duration::hours(1);
    assert!(check_signature(&p, &signed(&signer, request("1.1.0"), later), Utc::now()).is_err());
    // Secure by default: a trusted key alone makes signatures required.
    let mut p = policy(vec![public(&signer)]);
    let err = check_signature(&p, &request("1.1.0"), Utc::now()).unwrap_err();
    assert!(err.to_string().contains("unsigned"), "{err}");
    p.allow_unsigned = true;
    let unverified = check_signature(&p, &request("1.1.0"), Utc::now()).unwrap();
    assert!(!unverified.verified);
    assert_eq!(unverified.floor, 0);
}

#[test]
fn downloads_are_checked_for_size_and_hash() {
    let r = request("1.1.0");
    assert!(verify_download(&r, 10, &"AB".repeat(32)).is_ok());
    assert!(matches!(
        verify_download(&r, 9, &"ab".repeat(32)),
        Err(UpdateError::SizeMismatch {
            expected: 10,
            got: 9
        })
    ));
    assert!(matches!(
        verify_download(&r, 10, &"cd".repeat(32)),
        Err(UpdateError::WrongHash { .. })
    ));
}

#[test]
fn staging_renames_the_part_file_and_keeps_earlier_versions() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (version, body) in [("1.1.0", b"old"), ("1.2.0", b"new")] {
        let part = part_path(&dir, version);
        std::fs::write(&part, body).unwrap();
        stage(&part, &staged_path(&dir, version)).unwrap();
        assert!(!part.exists());
    }
    assert_eq!(
        std::fs::read(dir.join("edge-service-1.1.0")).unwrap(),
        b"old"
    );
    assert_eq!(
        std::fs::read(dir.join("edge-service-1.2.0")).unwrap(),
        b"new"
    );
    assert_eq!(
        staged_path(&dir, "1.0.0+build.1"),
        dir.join("edge-service-1.0.0_build.1")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sink_restart_forgets_what_was_written() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = part_path(&dir, "1.1.0");
    let mut sink = Sink::create(&path).unwrap();
    sink.file.write_all(b"garbage").unwrap();
    sink.hash.update(b"garbage");
    sink.have = 7;
    sink.restart().unwrap();
    sink.file.write_all(b"abc").unwrap();
    sink.hash.update(b"abc");
    drop(sink.file);
    assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    assert_eq!(
        hex(sink.hash.finish().as_ref()),
        hex(digest::digest(&digest::SHA256, b"abc").as_ref())
    );
    assert_eq!(content_range_start("bytes 7-9/10"), Some(7));
    assert_eq!(content_range_start("bytes */10"), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn partial_downloads_of_a_killed_run_are_removed_and_releases_kept() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(part_path(&dir, "1.1.0"), b"half").unwrap();
    std::fs::write(staged_path(&dir, "1.0.0"), b"whole").unwrap();
    assert_eq!(remove_partial_downloads(&dir).unwrap(), 1);
    assert_eq!(staged_files(&dir), vec!["edge-service-1.0.0"]);
    assert_eq!(remove_partial_downloads(&dir.join("absent")).unwrap(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn staged_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Collects the progress frames the updater sends.
struct Frames(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Actor for Frames {
    type Context = Context<Self>;
}

impl Handler<SendEvent> for Frames {
    type Result = ();

    fn handle(&mut self, SendEvent(event): SendEvent, _ctx: &mut Self::Context) {
        if let DeviceEvent::CommandProgress(p) = event {
            self.0.lock().unwrap().push(p.percent);
        }
    }
}

/// A one-file HTTP server, one connection per entry of `plan`: the first answers 200 and
/// cuts the body at `cut` bytes; the next answers the `Range` it was sent with 206, or
/// the whole body with 200 when `honour_range` is off. Answers the Range headers seen.
fn flaky_server(
    body: Vec<u8>,
    cut: usize,
    honour_range: bool,
) -> (String, std::thread::JoinHandle<Vec<Option<String>>>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/artifact", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut ranges = Vec::new();
        for round in 0..2 {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("range") {
                        range = Some(value.trim().to_owned());
                    }
                }
            }
            ranges.push(range.clone());
            let total = body.len();
            if round == 0 {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(&body[..cut]).unwrap();
                // Dropped here: the client sees the body end early.
                continue;
            }
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
                .filter(|_| honour_range)
                .unwrap_or(0);
            let head = if start > 0 {
                format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
                        total - start,
                        total - 1
                    )
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n")
            };
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body[start..]).unwrap();
        }
        ranges
    });
    (url, handle)
}

async fn run_download(honour_range: bool) {
    let body: Vec<u8> = (0..700_000u32).map(|i| (i * 7) as u8).collect();
    let sha = hex(digest::digest(&digest::SHA256, &body).as_ref());
    let (url, server) = flaky_server(body.clone(), 300_000, honour_range);
    let mut p = policy(vec![]);
    p.staging_dir = temp_dir();
    let mut r = request("1.1.0");
    r.url = url;
    r.sha256 = sha.clone();
    r.size = body.len() as u64;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let frames = Frames(seen.clone()).start().recipient();
    let (path, got) = fetch_and_stage(awc::Client::default(), p.clone(), r, "t".into(), frames)
        .await
        .unwrap();
    assert_eq!(got, sha);
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(staged_files(&p.staging_dir), vec!["edge-service-1.1.0"]);
    let ranges = server.join().unwrap();
    assert_eq!(ranges, vec![None, Some("bytes=300000-".to_owned())]);
    // Let the progress frames arrive; the last says 100.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.lock().unwrap().last(), Some(&100));
    std::fs::remove_dir_all(&p.staging_dir).unwrap();
}

#[actix::test]
async fn a_dropped_download_resumes_with_a_range() {
    run_download(true).await;
}

#[actix::test]
async fn a_whole_body_answer_to_a_range_starts_again_from_zero() {
    run_download(false).await;
}

#[actix::test]
async fn a_wrong_hash_leaves_nothing_in_the_staging_dir() {
    let body = vec![5u8; 1000];
    let (url, server) = flaky_server(body.clone(), 400, true);
    let mut p = policy(vec![]);
    p.staging_dir = temp_dir();
    let mut r = request("1.1.0");
    r.url = url;
    r.size = body.len() as u64;
    let frames = Frames(Default::default()).start().recipient();
    let err = fetch_and_stage(awc::Client::default(), p.clone(), r, "t".into(), frames)
        .await
        .unwrap_err();
    assert!(matches!(err, UpdateError::WrongHash { .. }), "{err}");
    server.join().unwrap();
    assert!(staged_files(&p.staging_dir).is_empty());
    std::fs::remove_dir_all(&p.staging_dir).unwrap();
}

/// A server whose slots are taken for the first `busy` requests (503 or 429 with
/// `Retry-After: 1`), then serves the body.
fn busy_server(body: Vec<u8>, busy: usize) -> (String, std::thread::JoinHandle<usize>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/artifact", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        for round in 0..=busy {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
            }
            if round < busy {
                let status = if round % 2 == 0 {
                    "503 Service Unavailable"
                } else {
                    "429 Too Many Requests"
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).unwrap();
                continue;
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        }
        busy + 1
    });
    (url, handle)
}

#[actix::test]
async fn a_busy_server_is_waited_for_without_failing_the_update() {
    // More busy answers than the retries a dropped connection gets: waiting for a turn is
    // not counted as a failure.
    let busy = MAX_RETRIES as usize + 2;
    let body = vec![9u8; 4096];
    let sha = hex(digest::digest(&digest::SHA256, &body).as_ref());
    let (url, server) = busy_server(body.clone(), busy);
    let mut p = policy(vec![]);
    p.staging_dir = temp_dir();
    let mut r = request("1.1.0");
    r.url = url;
    r.sha256 = sha.clone();
    r.size = body.len() as u64;
    let frames = Frames(Default::default()).start().recipient();
    let started = std::time::Instant::now();
    let (path, got) = fetch_and_stage(awc::Client::default(), p.clone(), r, "t".into(), frames)
        .await
        .unwrap();
    assert_eq!(got, sha);
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(server.join().unwrap(), busy + 1);
    assert!(
        started.elapsed() >= Duration::from_secs(busy as u64),
        "each busy answer was waited out"
    );
    std::fs::remove_dir_all(&p.staging_dir).unwrap();
}
