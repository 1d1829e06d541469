//! The real binary: `serve` on port 0, the bootstrap admin token, healthz/readyz/me over
//! TCP, graceful shutdown on SIGTERM, and (SQLite) a second process refused while one
//! serves. Runs on SQLite always and on Postgres when
//! `KUBENOVA_TEST_POSTGRES_URL` is set (skipped loudly otherwise; a failure when
//! `KUBENOVA_REQUIRE_POSTGRES=1`).
#![allow(clippy::unwrap_used, missing_docs)]

use serde_json::Value;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    /// No manager outlives its test, also when the test fails half-way.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(database_url: &str, dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubenova-manager"))
        .current_dir(dir)
        .env_remove("KUBENOVA_KEKS")
        .env_remove("KUBENOVA_JWT_SECRET")
        .env_remove("KUBENOVA_INSECURE_DEV_NO_AUTH")
        .env("DATABASE_URL", database_url)
        .env("KUBENOVA_DATA_DIR", dir.join("data"))
        .env("KUBENOVA_LOG", "info")
        .env_remove("KUBENOVA_LOG_FORMAT")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            log2.lock().unwrap().push_str(&line);
            log2.lock().unwrap().push('\n');
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["fields"]["message"] == "listening"
            {
                let _ = tx.send(
                    v["fields"]["address"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!("the server did not start; log:\n{}", log.lock().unwrap());
        }
    };
    Server { child, addr, log }
}

/// One HTTP/1.0 request (no chunked encoding, connection closes) → (status, body).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn exercise(database_url: &str, backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = start(database_url, dir.path());
    let token_path = dir.path().join("data/admin.token");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_string();

    let (s, v) = http(&srv.addr, "GET", "/api/v1/healthz", None);
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    // On Postgres, readiness also waits for the change listener's LISTEN connection,
    // which the manager opens in the background as it starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (s, v) = loop {
        let (s, v) = http(&srv.addr, "GET", "/api/v1/readyz", None);
        if s == 200 || std::time::Instant::now() > deadline {
            break (s, v);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["dependencies"]["store"]["backend"], backend);
    let (s, v) = http(&srv.addr, "GET", "/api/v1/me", None);
    assert_eq!((s, v["code"].as_str()), (401, Some("KN-401")));
    let (s, v) = http(&srv.addr, "GET", "/api/v1/me", Some(&token));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["subject"], "bootstrap-admin");
    assert_eq!(v["roles"][0], "admin");
    let (s, v) = http(&srv.addr, "GET", "/api/v1/features", Some(&token));
    assert_eq!((s, v["store"].as_str()), (200, Some(backend)));

    // SIGTERM: graceful shutdown, exit 0.
    let pid = srv.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = srv.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        srv.log.lock().unwrap()
    );
    std::thread::sleep(Duration::from_millis(100));
    let log = srv.log.lock().unwrap().clone();
    assert!(
        log.contains("admin.token"),
        "the token path is logged once:\n{log}"
    );
    assert!(!log.contains(&token), "the token never reaches the log");
    assert!(
        log.contains("kubenova::access"),
        "structured access logs:\n{log}"
    );
    // stderr is a pipe: JSON lines by the logging convention, times as RFC 3339 UTC, in
    // fields too.
    for line in log.lines() {
        kubenova_telemetry::test_support::check_json_line(line).unwrap();
    }
    let bootstrap = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("wrote a bootstrap admin token"))
        })
        .unwrap();
    kubenova_telemetry::test_support::check_timestamp(
        bootstrap["fields"]["expires_at"].as_str().unwrap(),
    )
    .unwrap();

    // A restart issues no second bootstrap token.
    let before = std::fs::read_to_string(&token_path).unwrap();
    let srv2 = start(database_url, dir.path());
    let (s, _) = http(&srv2.addr, "GET", "/api/v1/me", Some(&token));
    assert_eq!(s, 200, "the token survives a restart (same secret)");
    assert_eq!(std::fs::read_to_string(&token_path).unwrap(), before);
    if backend == "sqlite" {
        refused_while_served(database_url, dir.path(), &srv2);
        let (s, _) = http(&srv2.addr, "GET", "/api/v1/me", Some(&token));
        assert_eq!(s, 200, "the server goes on serving");
    }
    assert_eq!(
        srv2.log
            .lock()
            .unwrap()
            .matches("wrote a bootstrap admin token")
            .count(),
        0
    );
    if backend == "sqlite" {
        // SQLite: admin access is recovered while the manager is stopped.
        drop(srv2);
        let recovered = admin_token_recovery(database_url, dir.path(), &token);
        let srv3 = start(database_url, dir.path());
        check_recovered(&srv3, &recovered);
    } else {
        // Postgres: while the manager runs.
        let recovered = admin_token_recovery(database_url, dir.path(), &token);
        check_recovered(&srv2, &recovered);
    }
}

fn admin_token(database_url: &str, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubenova-manager"))
        .current_dir(dir)
        .env_remove("KUBENOVA_KEKS")
        .env_remove("KUBENOVA_JWT_SECRET")
        .env_remove("KUBENOVA_MAX_TOKEN_TTL")
        .env("DATABASE_URL", database_url)
        .env("KUBENOVA_DATA_DIR", dir.join("data"))
        .env("USER", "ops-alice")
        .arg("admin-token")
        .args(args)
        .output()
        .unwrap()
}

/// `admin-token`: bad TTLs refused changing nothing, `--print` to stdout, then a fresh
/// token into `data/admin.token` (mode 0600). Returns the written token.
fn admin_token_recovery(database_url: &str, dir: &std::path::Path, old: &str) -> String {
    let token_path = dir.join("data/admin.token");
    for (ttl, why) in [
        ("25h", "at most --max-token-ttl (24h)"),
        ("0s", "at least 1m"),
    ] {
        let out = admin_token(database_url, dir, &["--ttl", ttl]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--ttl {ttl} accepted");
        assert!(err.contains(why), "--ttl {ttl}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(std::fs::read_to_string(&token_path).unwrap().trim(), old);
    }

    let out = admin_token(database_url, dir, &["--print", "--ttl", "1h"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let printed = printed.trim();
    assert_eq!(printed.split('.').count(), 3, "a JWT on stdout: {printed}");
    assert!(!err.contains(printed), "the token never reaches the log");
    assert_eq!(
        std::fs::read_to_string(&token_path).unwrap().trim(),
        old,
        "--print leaves the file alone"
    );

    let out = admin_token(database_url, dir, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["path"], token_path.display().to_string());
    assert_eq!(v["subject"], "recovery-admin");
    kubenova_telemetry::test_support::check_timestamp(v["expiresAt"].as_str().unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let written = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(written, old);
    assert_ne!(written, printed);
    assert!(!err.contains(&written), "the token never reaches the log");
    written
}

/// The recovered token is an admin of the manager, and its issuance is in the audit log.
fn check_recovered(srv: &Server, token: &str) {
    let (s, v) = http(&srv.addr, "GET", "/api/v1/me", Some(token));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["subject"], "recovery-admin");
    assert_eq!(v["roles"][0], "admin");
    let (s, v) = http(
        &srv.addr,
        "GET",
        "/api/v1/audit?resourceKind=token&limit=500",
        Some(token),
    );
    assert_eq!(s, 200, "{v}");
    let events: Vec<&Value> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "token.admin-recovery")
        .collect();
    // One for --print, one for the file.
    assert_eq!(events.len(), 2, "{v}");
    for e in events {
        assert_eq!(e["actor"], "local:ops-alice", "{e}");
        assert_eq!(e["outcome"], "success", "{e}");
    }
}

/// The serving manager holds the SQLite file: each maintenance command is refused at
/// once with one line naming the holder and what to do instead, without sqlx's noise, and
/// changes nothing.
fn refused_while_served(database_url: &str, dir: &std::path::Path, srv: &Server) {
    let holder = format!("in use by process {} (kubenova-manager)", srv.child.id());
    let keys_before = std::fs::read_to_string(dir.join("data/kek.keys")).unwrap();
    for (command, advice) in [
        ("migrate", "`serve` applied the migrations when it started"),
        (
            "rotate-keys",
            "stop it, run rotate-keys, then start it again",
        ),
        ("rotate-signing-keys", "POST /api/v1/signing-keys:rotate"),
        ("admin-token", "POST /api/v1/tokens"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kubenova-manager"))
            .current_dir(dir)
            .env_remove("KUBENOVA_KEKS")
            .env_remove("KUBENOVA_LOG")
            .env_remove("RUST_LOG")
            .env("DATABASE_URL", database_url)
            .env("KUBENOVA_DATA_DIR", dir.join("data"))
            .arg(command)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {err}");
        assert!(out.stdout.is_empty(), "{command}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{command}: one line, printed once:\n{err}");
        let line = lines[0];
        assert!(
            line.starts_with(&format!("kubenova-manager: {command}: ")),
            "{command}: {line}"
        );
        assert!(line.contains(&holder), "{command}: {line}");
        assert!(line.contains(advice), "{command}: {line}");
        assert!(!err.contains("sqlx"), "{command}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("data/kek.keys")).unwrap(),
        keys_before,
        "a refused rotate-keys added no key"
    );
}

#[test]
fn serve_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kn.db").display());
    exercise(&url, "sqlite");
}

fn pg_url() -> Option<String> {
    match std::env::var("KUBENOVA_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("KUBENOVA_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("KUBENOVA_REQUIRE_POSTGRES=1 but KUBENOVA_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "!!! POSTGRES SKIPPED: set KUBENOVA_TEST_POSTGRES_URL to run the binary against Postgres !!!"
            );
            None
        }
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let head = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{head}/{db}?{q}"),
        None => format!("{head}/{db}"),
    }
}

#[test]
fn serve_on_postgres() {
    let Some(url) = pg_url() else { return };
    let db = format!("kn_infra_{}", uuid::Uuid::new_v4().simple());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = sqlx::PgPool::connect(&url)
            .await
            .expect("connect to KUBENOVA_TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    });
    let result = std::panic::catch_unwind(|| exercise(&with_database(&url, &db), "postgres"));
    rt.block_on(async {
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&admin)
            .await;
        admin.close().await;
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The API reference page in a real headless browser with no network but the manager:
/// everything it needs comes from the manager, it renders the operations, and the
/// browser reports no Content-Security-Policy violation and no blocked outside request.
/// Needs Debian's `chromium` (installed by `.ci/run`); skipped loudly without it, a failure
/// when `KUBENOVA_REQUIRE_E2E=1`.
#[test]
fn the_api_reference_renders_offline_in_a_browser() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        assert!(
            std::env::var("KUBENOVA_REQUIRE_E2E").as_deref() != Ok("1"),
            "KUBENOVA_REQUIRE_E2E=1 but chromium is not installed"
        );
        eprintln!("!!! API REFERENCE BROWSER TEST SKIPPED: chromium is not installed !!!");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kn.db").display());
    let mut srv = start(&url, dir.path());
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // No network: every host but the manager's loopback address fails to resolve.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=20000",
            &format!("--user-data-dir={}", dir.path().join("chromium").display()),
            "--dump-dom",
            &format!("http://{}/api/v1/docs", srv.addr),
        ])
        .output()
        .unwrap();
    let _ = srv.child.kill();
    let dom = String::from_utf8_lossy(&out.stdout);
    let console = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed:\n{console}");
    // Scalar rendered the document: its title, the tag groups and an expanded operation list.
    for text in [
        "KubeNova API",
        "Open Group - clusters",
        "Open Group - tenants",
        "Open Group - apps",
        "/api/v1/healthz",
        "Powered by Scalar",
    ] {
        assert!(
            dom.contains(text),
            "{text:?} not rendered; DOM:\n{dom:.3000}"
        );
    }
    for bad in [
        "Content Security Policy",
        "Refused to",
        "ERR_NAME_NOT_RESOLVED",
        "ERR_BLOCKED",
    ] {
        assert!(
            !console.contains(bad),
            "the browser reported {bad:?}:\n{console}"
        );
    }
    assert!(
        console.contains("@scalar/api-reference"),
        "the page ran the embedded Scalar bundle:\n{console}"
    );
}
