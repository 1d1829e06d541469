//! What the end-to-end tests share: the binaries and a fresh database for the manager.
#![allow(clippy::unwrap_used, dead_code)]

/// The binaries the end-to-end tests run, or `None` after a loud skip when they are not
/// built (a failure when `KUBENOVA_REQUIRE_E2E=1`).
pub fn binaries() -> Option<kubenova_demo::Binaries> {
    match kubenova_demo::Binaries::locate() {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(
                std::env::var("KUBENOVA_REQUIRE_E2E").as_deref() != Ok("1"),
                "KUBENOVA_REQUIRE_E2E=1 but {e}"
            );
            eprintln!("!!! E2E SKIPPED: {e} !!!");
            None
        }
    }
}

/// A fresh Postgres database when `KUBENOVA_TEST_POSTGRES_URL` is set (returned with what
/// [`drop_database`] needs), else an SQLite file (loudly; a failure when
/// `KUBENOVA_REQUIRE_POSTGRES=1`).
pub async fn database() -> (String, Option<(String, String)>) {
    match std::env::var("KUBENOVA_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let db = format!("kn_e2e_{}", uuid::Uuid::new_v4().simple());
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            let (base, _) = url.rsplit_once('/').unwrap();
            (format!("{base}/{db}"), Some((url, db)))
        }
        _ => {
            assert!(
                std::env::var("KUBENOVA_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "KUBENOVA_REQUIRE_POSTGRES=1 but KUBENOVA_TEST_POSTGRES_URL is not set"
            );
            eprintln!("!!! POSTGRES NOT CONFIGURED: the e2e runs the manager on SQLite !!!");
            let dir =
                std::env::temp_dir().join(format!("kn-e2e-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            (format!("sqlite://{}", dir.join("kn.db").display()), None)
        }
    }
}

/// Drops a database made by [`database`].
pub async fn drop_database(pg: Option<(String, String)>) {
    if let Some((url, db)) = pg {
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}
