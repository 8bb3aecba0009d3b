//! The PostgreSQL backend, for teams that share one store.
//!
//! Schema migrations run on connect; sqlx holds an advisory lock while it migrates, so two
//! capstan processes that start at once against a new database do not race.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};

use crate::common::{DbContext, store_impl};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// A store in a PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgresql://USER:PASSWORD@HOST:PORT/DATABASE`) and brings the
    /// schema up to date.
    pub async fn connect(url: &str) -> crate::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(url)
            .await
            // The url may hold a password: the error names the server's complaint, not the url.
            .map_err(|e| crate::StoreError::Backend(format!("cannot connect to postgres: {e}")))?;
        MIGRATOR.run(&pool).await.map_err(|e| {
            crate::StoreError::Backend(format!("cannot migrate the postgres store schema: {e}"))
        })?;
        Ok(PostgresStore { pool })
    }

    async fn begin(&self) -> crate::Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.ctx("starting a transaction")
    }
}

store_impl!(PostgresStore, PgConnection, "postgres");

crate::tracking::tracking_impl!(
    PostgresStore,
    PgConnection,
    crate::tracking::Dialect::Postgres
);

crate::models::models_impl!(
    PostgresStore,
    PgConnection,
    crate::tracking::Dialect::Postgres
);
