//! The login cache: one JSON file per user, `$XDG_CONFIG_HOME/kubenova/logins.json`
//! (else `~/.config/kubenova/logins.json`), holding one entry per manager URL.
//!
//! It holds secrets (the ID token and the refresh token), as kubectl's and gcloud's own
//! caches do, so it is protected like them: the directory is created `0700`, the file
//! is written `0600` (a new file is renamed over the old one, so readers never see half a
//! file), and a file or directory that group or others may read or write is refused with
//! the command that fixes it. Read-modify-write sections (login, refresh, logout) hold an
//! exclusive lock on `logins.json.lock` beside it, so kubectl running several
//! `kubenova auth token` at once refreshes once and keeps the rotated refresh token.

use crate::Failure;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The cache file's format version.
pub const VERSION: u32 = 1;

/// One login: the tokens of a person signed in to one manager, and where to refresh and
/// revoke them.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Login {
    /// The identity provider's issuer URL.
    pub issuer: String,
    /// The public client id the tokens were issued to.
    pub client_id: String,
    /// The installed-app or device client's secret, when the provider requires one (not
    /// confidential by the provider's design; kept to refresh and revoke without asking
    /// the manager again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// The scopes asked for.
    pub scopes: Vec<String>,
    /// The provider's token endpoint (refresh).
    pub token_endpoint: String,
    /// The provider's revocation endpoint (logout), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    /// The bearer token sent to the manager.
    pub id_token: String,
    /// When `id_token` expires (Unix seconds).
    pub expires_at: i64,
    /// Refreshes `id_token` (rotated by most providers: the newest one is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Who the manager said the person is at login.
    #[serde(default)]
    pub subject: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens.
        f.debug_struct("Login")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("expires_at", &self.expires_at)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// The whole file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Logins {
    /// [`VERSION`].
    #[serde(default)]
    pub version: u32,
    /// By manager URL (as `--manager`, without a trailing slash).
    #[serde(default)]
    pub logins: BTreeMap<String, Login>,
}

/// Where the cache lives.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    file: PathBuf,
}

/// An exclusive lock on the cache, released when dropped.
#[derive(Debug)]
pub struct Locked {
    _file: File,
}

impl Cache {
    /// `$XDG_CONFIG_HOME/kubenova/logins.json`, else `$HOME/.config/kubenova/logins.json`.
    pub fn locate() -> Result<Cache, Failure> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty() && Path::new(v).is_absolute())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
            })
            .ok_or_else(|| {
                Failure("cannot find the login cache: set HOME or XDG_CONFIG_HOME".into())
            })?;
        Ok(Cache::at(base.join("kubenova")))
    }

    /// The cache in `dir` (`dir/logins.json`).
    pub fn at(dir: PathBuf) -> Cache {
        Cache {
            file: dir.join("logins.json"),
            dir,
        }
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Refuses a directory group or others may write, and a file (or lock) they may read or
    /// write, a symbolic link, or anything but a regular file. (With the directory only
    /// writable by its owner, nobody else can swap a file for a link after this check;
    /// new files are created with `O_EXCL`, which never follows one.)
    fn check(&self, path: &Path, dir: bool) -> Result<bool, Failure> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Failure(format!("cannot read {}: {e}", path.display()))),
        };
        let ok_kind = if dir {
            meta.file_type().is_dir()
        } else {
            meta.file_type().is_file()
        };
        if !ok_kind {
            return Err(Failure(format!(
                "{} is not a regular {}: remove it and run `kubenova login` again",
                path.display(),
                if dir { "directory" } else { "file" }
            )));
        }
        let mode = meta.mode() & 0o777;
        let (bad, fix) = if dir {
            (mode & 0o022 != 0, "700")
        } else {
            (mode & 0o077 != 0, "600")
        };
        if bad {
            return Err(Failure(format!(
                "{} holds your sign-in tokens but its mode {mode:o} lets other users {}: run `chmod {fix} {}` (or delete it and run `kubenova login` again)",
                path.display(),
                if dir { "change it" } else { "read it" },
                path.display()
            )));
        }
        Ok(true)
    }

    fn ensure_dir(&self) -> Result<(), Failure> {
        if !self.check(&self.dir, true)? {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| Failure(format!("cannot create {}: {e}", self.dir.display())))?;
        }
        Ok(())
    }

    /// Takes the exclusive lock (waits for another `kubenova` holding it).
    pub fn lock(&self) -> Result<Locked, Failure> {
        self.ensure_dir()?;
        let path = self.dir.join("logins.json.lock");
        self.check(&path, false)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Failure(format!("cannot open {}: {e}", path.display())))?;
        file.lock()
            .map_err(|e| Failure(format!("cannot lock {}: {e}", path.display())))?;
        Ok(Locked { _file: file })
    }

    /// Reads the file (empty when there is none).
    pub fn read(&self) -> Result<Logins, Failure> {
        self.check(&self.dir, true)?;
        if !self.check(&self.file, false)? {
            return Ok(Logins::default());
        }
        let text = fs::read_to_string(&self.file)
            .map_err(|e| Failure(format!("cannot read {}: {e}", self.file.display())))?;
        let logins: Logins = serde_json::from_str(&text).map_err(|e| {
            Failure(format!(
                "{} is not a kubenova login cache ({e}): delete it and run `kubenova login` again",
                self.file.display()
            ))
        })?;
        if logins.version > VERSION {
            return Err(Failure(format!(
                "{} was written by a newer kubenova (format {}): upgrade kubenova",
                self.file.display(),
                logins.version
            )));
        }
        Ok(logins)
    }

    /// Writes the file atomically (a new `0600` file renamed over the old one). Call it
    /// holding [`Cache::lock`].
    pub fn write(&self, _lock: &Locked, logins: &Logins) -> Result<(), Failure> {
        self.ensure_dir()?;
        let mut all = Logins {
            version: VERSION,
            logins: logins.logins.clone(),
        };
        all.logins.retain(|_, l| !l.id_token.is_empty());
        let text = serde_json::to_vec_pretty(&all)?;
        let tmp = self.dir.join(format!(
            ".logins.json.{}.{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default()
        ));
        let res = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.file)?;
            // The rename itself is durable once the directory is synced.
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(Failure(format!(
                "cannot write {}: {e}",
                self.file.display()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn login(token: &str) -> Login {
        Login {
            issuer: "https://idp.example.com".into(),
            client_id: "kubenova".into(),
            client_secret: None,
            scopes: vec!["openid".into()],
            token_endpoint: "https://idp.example.com/token".into(),
            revocation_endpoint: None,
            id_token: token.into(),
            expires_at: 1,
            refresh_token: Some("rt".into()),
            subject: "alice".into(),
        }
    }

    #[test]
    fn written_0600_in_a_0700_directory_and_read_back() {
        let home = tempfile::tempdir().unwrap();
        let cache = Cache::at(home.path().join("a/kubenova"));
        assert!(cache.read().unwrap().logins.is_empty());
        let lock = cache.lock().unwrap();
        let mut all = cache.read().unwrap();
        all.logins.insert("https://m".into(), login("t1"));
        cache.write(&lock, &all).unwrap();
        drop(lock);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(cache.path()), 0o600);
        assert_eq!(mode(&home.path().join("a/kubenova")), 0o700);
        let back = cache.read().unwrap();
        assert_eq!(back.version, VERSION);
        assert_eq!(back.logins["https://m"].id_token, "t1");
        // Only the file and its lock are left (no temporary files).
        let mut names: Vec<_> = fs::read_dir(home.path().join("a/kubenova"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["logins.json", "logins.json.lock"]);
        assert!(!format!("{:?}", back.logins["https://m"]).contains("t1"));
    }

    #[test]
    fn readable_by_others_is_refused_with_the_fix() {
        let home = tempfile::tempdir().unwrap();
        let cache = Cache::at(home.path().join("kubenova"));
        let lock = cache.lock().unwrap();
        cache.write(&lock, &Logins::default()).unwrap();
        fs::set_permissions(cache.path(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = cache.read().unwrap_err().0;
        assert!(err.contains("mode 644"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", cache.path().display())),
            "{err}"
        );
        fs::set_permissions(cache.path(), fs::Permissions::from_mode(0o600)).unwrap();
        cache.read().unwrap();
        fs::set_permissions(
            home.path().join("kubenova"),
            fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let err = cache.read().unwrap_err().0;
        assert!(err.contains("chmod 700"), "{err}");
    }

    #[test]
    fn a_symlink_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let cache = Cache::at(home.path().join("kubenova"));
        drop(cache.lock().unwrap());
        let target = home.path().join("elsewhere");
        fs::write(&target, "{}").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, cache.path()).unwrap();
        let err = cache.read().unwrap_err().0;
        assert!(err.contains("not a regular file"), "{err}");
    }
}
