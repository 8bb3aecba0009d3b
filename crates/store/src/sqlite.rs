//! The embedded SQLite backend: the default store at `.capstan/capstan.db`.
//!
//! Several capstan processes may share one workspace (a `run` in one terminal, `runs cancel` or
//! `server` in another), so the database runs in WAL mode (readers never block the writer) with
//! a busy timeout (a writer waits for the lock instead of failing), and every write transaction
//! starts with `BEGIN IMMEDIATE` (it takes the write lock up front, so it can never fail halfway
//! when upgrading a read lock).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection, Transaction};

use crate::common::{DbContext, store_impl};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a writer waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens of the same new file can race to migrate it; a retry sees the other's work.
const MIGRATION_ATTEMPTS: usize = 3;

/// How often the background checkpointer folds the write-ahead log back into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// A store in one SQLite file (or in memory).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Stops the background checkpointer when the last clone of the store is dropped.
    _checkpointer: Option<std::sync::Arc<Checkpointer>>,
}

/// Checkpoints the write-ahead log off the hot path.
///
/// SQLite's automatic checkpoint runs inside whichever commit pushes the log past its limit,
/// and a checkpoint syncs the database file: a step's start or finish would then wait for the
/// disk, which on a busy machine can take seconds. Automatic checkpoints are turned off on
/// every connection and a background task runs passive checkpoints (they never block writers)
/// on a connection of its own instead.
#[derive(Debug)]
struct Checkpointer(tokio::task::JoinHandle<()>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Checkpointer {
    fn start(pool: SqlitePool) -> Checkpointer {
        Checkpointer(tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await
                {
                    tracing::debug!(error = %e, "background checkpoint failed");
                }
            }
        }))
    }
}

impl SqliteStore {
    /// Opens (creating it and its parent directories if needed) the database at `path` and
    /// brings its schema up to date. `:memory:` or `sqlite::memory:` opens a private in-memory
    /// database that lives as long as this store.
    pub async fn open(path: &str) -> crate::Result<Self> {
        if path.is_empty() {
            return Err(crate::StoreError::Invalid(
                "the sqlite store path must not be empty".to_owned(),
            ));
        }
        let mut checkpoint_pool = None;
        let pool = if matches!(path, ":memory:" | "sqlite::memory:") {
            let options = SqliteConnectOptions::from_str("sqlite::memory:")
                .ctx("configuring the in-memory store")?
                .foreign_keys(true);
            // An in-memory database dies with its last connection: keep exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
                .ctx("opening the in-memory store")?
        } else {
            let file = Path::new(path);
            if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    crate::StoreError::Backend(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            let options = SqliteConnectOptions::new()
                .filename(file)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // In WAL mode NORMAL is still crash-safe for the database; a power cut can only
                // lose the last commits, never corrupt it.
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(BUSY_TIMEOUT)
                // Checkpoints run in the background (see `Checkpointer`), not inside commits.
                .pragma("wal_autocheckpoint", "0");
            // One connection. A write by one connection of a pool makes every other connection
            // drop its page cache and read pages again; writes are serialised by SQLite anyway,
            // so more connections only add those reads (a 3,000-step fan-out ran 23% faster).
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                // The connection lives in this process and cannot hang up; the pool's ping
                // before each checkout would only cost a round trip to the database thread.
                .test_before_acquire(false)
                .connect_with(options.clone())
                .await
                .map_err(|e| crate::StoreError::Backend(format!("cannot open {path}: {e}")))?;
            // The checkpointer has a connection of its own, so a checkpoint's disk sync never
            // holds up the store's connection.
            checkpoint_pool = Some(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_lazy_with(options),
            );
            pool
        };
        // Processes that open a new workspace at once (several `capstan run`s) would race to
        // migrate it, and the loser of a race over an `ALTER TABLE` fails. A lock on a file
        // beside the database serialises them; it is released when `_migrating` drops.
        let _migrating = match lock_path(path) {
            Some(lock) => Some(lock_migrations(lock).await?),
            None => None,
        };
        let mut attempt = 1;
        loop {
            match MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(_) if attempt < MIGRATION_ATTEMPTS => attempt += 1,
                Err(e) => {
                    return Err(crate::StoreError::Backend(format!(
                        "cannot migrate the store schema in {path}: {e}"
                    )));
                }
            }
        }
        let checkpointer = checkpoint_pool.map(|p| std::sync::Arc::new(Checkpointer::start(p)));
        Ok(SqliteStore {
            pool,
            _checkpointer: checkpointer,
        })
    }

    async fn begin(&self) -> crate::Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("starting a transaction")
    }
}

/// The file whose lock serialises migrations of the database at `path`; none in memory.
fn lock_path(path: &str) -> Option<std::path::PathBuf> {
    (!matches!(path, ":memory:" | "sqlite::memory:")).then(|| format!("{path}.migrate-lock").into())
}

/// Waits for, then holds, the exclusive lock on `lock` (created if missing).
async fn lock_migrations(lock: std::path::PathBuf) -> crate::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    .map_err(|e| crate::StoreError::Backend(format!("cannot lock the store for migration: {e}")))
}

store_impl!(SqliteStore, SqliteConnection, "sqlite");

crate::tracking::tracking_impl!(
    SqliteStore,
    SqliteConnection,
    crate::tracking::Dialect::Sqlite
);

crate::models::models_impl!(
    SqliteStore,
    SqliteConnection,
    crate::tracking::Dialect::Sqlite
);
