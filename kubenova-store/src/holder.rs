//! Which process holds an SQLite database file.
//!
//! [`crate::SqliteStore`] takes its file exclusively, so a second process opening it
//! (another manager, or a maintenance command while one serves) cannot. Instead of waiting
//! for SQLite's busy timeout to say "database is locked", the kernel's table of POSIX
//! locks (`/proc/locks`, Linux) tells at once whether another process holds the file, and
//! which one.

use std::path::Path;

/// A process holding an SQLite database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteHolder {
    /// Its process id.
    pub pid: u32,
    /// Its program name (the file name of its executable), when readable.
    pub program: Option<String>,
}

impl std::fmt::Display for SqliteHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.program {
            Some(p) => write!(f, "process {} ({p})", self.pid),
            None => write!(f, "process {}", self.pid),
        }
    }
}

/// Another process holding the SQLite database of `url` (`sqlite://path`), if any.
/// `None` for other URLs, for a file that does not exist, when no other process holds a
/// lock on it, and on systems without `/proc/locks`. Locks of this process are not
/// counted: a store of this process closing its file is waited for by the busy timeout.
pub fn sqlite_holder(url: &str) -> Option<SqliteHolder> {
    holder_of_file(&sqlite_file(url)?)
}

/// The database file of an SQLite URL (`sqlite://path`, as the store opens it); `None`
/// for other URLs and for URLs that do not parse.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr as _;
    if !url.starts_with("sqlite:") {
        return None;
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    Some(opts.get_filename().to_path_buf())
}

/// Another process holding a POSIX lock on `path`, if any (see [`sqlite_holder`]).
pub fn holder_of_file(path: &Path) -> Option<SqliteHolder> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        let pid = lock_holder(&locks, meta.dev(), meta.ino(), std::process::id())?;
        Some(SqliteHolder {
            pid,
            program: program_of(pid),
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// The first process other than `own_pid` holding a POSIX lock on the file `(dev, ino)`,
/// from the text of `/proc/locks`. Lines look like
/// `1: POSIX  ADVISORY  WRITE 4242 fe:00:10011497 1073741824 1073742335`; waiting requests
/// (`1: -> POSIX …`) hold nothing and are skipped.
pub(crate) fn lock_holder(locks: &str, dev: u64, ino: u64, own_pid: u32) -> Option<u32> {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // id, kind, mode, access, pid, maj:min:ino, start, end
        if fields.len() < 6 || fields[1] != "POSIX" {
            return None;
        }
        let pid: u32 = fields[4].parse().ok()?;
        let mut id = fields[5].split(':');
        let (maj, min, i) = (id.next()?, id.next()?, id.next()?);
        let same_file = u64::from_str_radix(maj, 16).ok()? == major
            && u64::from_str_radix(min, 16).ok()? == minor
            && i.parse::<u64>().ok()? == ino;
        (same_file && pid != own_pid).then_some(pid)
    })
}

#[cfg(target_os = "linux")]
fn program_of(pid: u32) -> Option<String> {
    // The executable's file name only: the rest of the command line may hold secrets.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok();
    let argv0 = cmdline
        .as_deref()
        .and_then(|c| c.split(|b| *b == 0).next())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .filter(|a| !a.is_empty());
    let name = match argv0 {
        Some(a) => Path::new(&a)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned()),
        None => std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|c| c.trim().to_string()),
    };
    name.filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // st_dev 0xfe00 is device fe:00.
    const LOCKS: &str = "\
1: POSIX  ADVISORY  WRITE 13292 fe:00:10010867 1073741824 1073742335
2: FLOCK  ADVISORY  WRITE 20176 fe:00:10011497 0 EOF
3: OFDLCK ADVISORY  READ  -1 fe:00:10011497 0 EOF
3: -> POSIX  ADVISORY  WRITE 999 fe:00:10011497 1073741824 1073742335
4: POSIX  ADVISORY  WRITE 18267 fe:00:10011497 1073741824 1073742335
5: POSIX  ADVISORY  WRITE 3843 08:01:10011497 0 EOF
";

    #[test]
    fn the_other_process_holding_the_file() {
        assert_eq!(lock_holder(LOCKS, 0xfe00, 10011497, 1), Some(18267));
        // Our own lock is no other process's.
        assert_eq!(lock_holder(LOCKS, 0xfe00, 10011497, 18267), None);
        // Same inode on another device.
        assert_eq!(lock_holder(LOCKS, 0x0801, 10011497, 1), Some(3843));
        assert_eq!(lock_holder(LOCKS, 0xfe00, 42, 1), None);
        assert_eq!(lock_holder("", 0xfe00, 10011497, 1), None);
    }

    #[test]
    fn the_file_of_an_sqlite_url() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/kn.db"),
            Some("/var/lib/kn.db".into())
        );
        assert_eq!(sqlite_file("sqlite://kn.db"), Some("kn.db".into()));
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }

    #[test]
    fn not_an_sqlite_file() {
        assert_eq!(sqlite_holder("postgres://u@h/db"), None);
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("none.db").display());
        assert_eq!(sqlite_holder(&url), None);
    }

    #[test]
    fn shows_pid_and_program() {
        let h = SqliteHolder {
            pid: 7,
            program: Some("kubenova-manager".into()),
        };
        assert_eq!(h.to_string(), "process 7 (kubenova-manager)");
    }
}
