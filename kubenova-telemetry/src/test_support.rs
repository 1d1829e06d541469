//! Helpers for the binaries' tests (feature `test-support`): run a binary with its
//! stderr on a pseudo-terminal, and read its log lines by the convention.

use std::io::Read as _;
use std::process::{Command, ExitStatus, Stdio};

/// Runs `cmd` to its end with stdin and stdout null and stderr on a new pseudo-terminal,
/// as when a person runs it in a terminal; returns its exit status and what it wrote to
/// stderr (with the terminal's `\r\n` turned back into `\n`).
pub fn run_with_stderr_on_a_terminal(mut cmd: Command) -> std::io::Result<(ExitStatus, String)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let path = std::path::PathBuf::from(
        name.into_string()
            .map_err(|e| std::io::Error::other(e.to_string()))?,
    );
    let terminal = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(&path)?
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(terminal));
    let mut child = cmd.spawn()?;
    // The child holds the only other end now: reading ends (EIO) when it exits.
    drop(cmd);
    let mut master = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Linux answers EIO once no process has the terminal open any more.
            Err(_) => break,
        }
    }
    let status = child.wait()?;
    Ok((status, String::from_utf8_lossy(&out).replace("\r\n", "\n")))
}

/// Whether `s` holds an ANSI escape sequence (colours).
pub fn has_ansi(s: &str) -> bool {
    s.contains('\u{1b}')
}

/// Checks that a JSON log line has the convention's shape: an RFC 3339 UTC `timestamp`,
/// a `level`, a `target` and `fields.message`.
pub fn check_json_line(line: &str) -> Result<serde_json::Value, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON log line ({e}): {line}"))?;
    let ts = v["timestamp"]
        .as_str()
        .ok_or_else(|| format!("no timestamp: {line}"))?;
    check_timestamp(ts).map_err(|e| format!("{e}: {line}"))?;
    for key in ["level", "target"] {
        if !v[key].is_string() {
            return Err(format!("no {key}: {line}"));
        }
    }
    if !v["fields"]["message"].is_string() {
        return Err(format!("no fields.message: {line}"));
    }
    Ok(v)
}

/// Checks that a text log line starts with an RFC 3339 UTC timestamp and a level.
pub fn check_text_line(line: &str) -> Result<(), String> {
    if line.trim_start().starts_with('{') {
        return Err(format!("a JSON line where text was expected: {line}"));
    }
    let plain = strip_ansi(line);
    let mut words = plain.split_whitespace();
    let ts = words
        .next()
        .ok_or_else(|| format!("empty line: {line:?}"))?;
    check_timestamp(ts).map_err(|e| format!("{e}: {line}"))?;
    match words.next() {
        Some("TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR") => Ok(()),
        _ => Err(format!("no level after the timestamp: {line}")),
    }
}

/// Checks that `ts` is RFC 3339 in UTC (`…Z`).
pub fn check_timestamp(ts: &str) -> Result<(), String> {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("timestamp {ts:?} is not RFC 3339 ({e})"))?;
    if !ts.ends_with('Z') {
        return Err(format!("timestamp {ts:?} is not in UTC"));
    }
    Ok(())
}

/// `s` without ANSI escape sequences (`ESC [ … letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The stderr lines of a run that are log lines: all but the one plain error line a
/// binary prints when it fails (`<name>: <message>`).
fn log_lines<'a>(name: &str, stderr: &'a str) -> Vec<&'a str> {
    let prefix = format!("{name}: ");
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !strip_ansi(l).starts_with(&prefix))
        .collect()
}

fn scrubbed(mut cmd: Command) -> Command {
    for var in [
        crate::FILTER_VAR,
        crate::FALLBACK_FILTER_VAR,
        crate::FORMAT_VAR,
        "NO_COLOR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn piped(name: &str, cmd: Command) -> (ExitStatus, String) {
    let mut cmd = cmd;
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn on_terminal(name: &str, cmd: Command) -> (ExitStatus, String) {
    run_with_stderr_on_a_terminal(cmd).unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

/// Asserts the logging convention of the binary `name` (see the crate documentation).
/// `make` builds a fresh command that writes at least one log line under the filter
/// `filter` and then ends by itself (successfully or not); each check adds its logging
/// variables or flag to it.
///
/// Checks: JSON lines with RFC 3339 UTC timestamps and no escape codes when stderr is a
/// pipe; text (no escape codes) with `KUBENOVA_LOG_FORMAT=text` or `--log-format text`;
/// text with colours on a terminal; JSON on a terminal when asked; no colours with
/// `NO_COLOR`; `RUST_LOG` used when `KUBENOVA_LOG` is unset and overridden when it is set;
/// a bad `KUBENOVA_LOG_FORMAT` refused naming the variable.
pub fn assert_log_convention(name: &str, filter: &str, make: &dyn Fn() -> Command) {
    let with = |vars: &[(&str, &str)]| {
        let mut cmd = scrubbed(make());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd
    };
    let json = |what: &str, stderr: &str| {
        let lines = log_lines(name, stderr);
        assert!(!lines.is_empty(), "{name}, {what}: no log line:\n{stderr}");
        for l in lines {
            if let Err(e) = check_json_line(l) {
                panic!("{name}, {what}: {e}\nstderr:\n{stderr}");
            }
        }
    };
    let text = |what: &str, stderr: &str| {
        let lines = log_lines(name, stderr);
        assert!(!lines.is_empty(), "{name}, {what}: no log line:\n{stderr}");
        for l in lines {
            if let Err(e) = check_text_line(l) {
                panic!("{name}, {what}: {e}\nstderr:\n{stderr}");
            }
        }
    };

    let (_, err) = piped(name, with(&[(crate::FILTER_VAR, filter)]));
    json("stderr a pipe", &err);
    assert!(!has_ansi(&err), "{name}: escape codes in a pipe:\n{err}");

    let (_, err) = piped(
        name,
        with(&[(crate::FILTER_VAR, filter), (crate::FORMAT_VAR, "text")]),
    );
    text("KUBENOVA_LOG_FORMAT=text in a pipe", &err);
    assert!(!has_ansi(&err), "{name}: escape codes in a pipe:\n{err}");

    let mut cmd = with(&[(crate::FILTER_VAR, filter), (crate::FORMAT_VAR, "json")]);
    cmd.args(["--log-format", "text"]);
    let (_, err) = piped(name, cmd);
    text("--log-format text over KUBENOVA_LOG_FORMAT=json", &err);

    let (_, err) = on_terminal(name, with(&[(crate::FILTER_VAR, filter)]));
    text("stderr a terminal", &err);
    assert!(has_ansi(&err), "{name}: no colours on a terminal:\n{err}");

    let (_, err) = on_terminal(
        name,
        with(&[(crate::FILTER_VAR, filter), (crate::FORMAT_VAR, "json")]),
    );
    json("KUBENOVA_LOG_FORMAT=json on a terminal", &err);
    assert!(!has_ansi(&err), "{name}: escape codes in JSON:\n{err}");

    let (_, err) = on_terminal(
        name,
        with(&[(crate::FILTER_VAR, filter), ("NO_COLOR", "1")]),
    );
    text("NO_COLOR on a terminal", &err);
    assert!(!has_ansi(&err), "{name}: colours despite NO_COLOR:\n{err}");

    let (_, err) = piped(name, with(&[(crate::FALLBACK_FILTER_VAR, filter)]));
    json("RUST_LOG alone", &err);

    let (_, err) = piped(
        name,
        with(&[
            (crate::FILTER_VAR, "off"),
            (crate::FALLBACK_FILTER_VAR, filter),
        ]),
    );
    assert!(
        log_lines(name, &err).is_empty(),
        "{name}: KUBENOVA_LOG=off did not win over RUST_LOG:\n{err}"
    );

    let (status, err) = piped(name, with(&[(crate::FORMAT_VAR, "xml")]));
    assert!(
        !status.success(),
        "{name}: KUBENOVA_LOG_FORMAT=xml accepted"
    );
    assert!(
        err.contains("KUBENOVA_LOG_FORMAT=\"xml\" is not a log format"),
        "{name}: {err}"
    );
}
