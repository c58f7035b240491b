//! The PostgreSQL schema's versions: each migration is SQL applied once, in order, in one
//! transaction with its row in `privault_keys.schema_version`, under an advisory lock so that
//! nodes starting together apply it once.

use deadpool_postgres::Client;

use super::{MIGRATE_LOCK, StoreError, pg_error};

/// One step of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number, from 1.
    pub version: u32,
    /// What it does.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "data tables per column family; keyring and deletion ledger in the keys schema",
        sql: r"
CREATE SCHEMA IF NOT EXISTS privault;
CREATE TABLE privault.keys (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE privault.fields (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE privault.consent (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE privault.audit (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE privault.shredded (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE privault.policies (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE privault.meta (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE privault.lookup (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE privault.audit_index (k bytea PRIMARY KEY, v bytea NOT NULL);
CREATE TABLE privault_keys.keyring (
    id smallint PRIMARY KEY CHECK (id = 1),
    body text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE privault_keys.ledger (
    seq bigserial PRIMARY KEY,
    line text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
",
    },
    Migration {
        version: 2,
        name: "the change log nodes read to keep their caches coherent",
        sql: r"
CREATE TABLE privault.changes (
    seq bigint PRIMARY KEY,
    node text NOT NULL,
    sids bytea[] NOT NULL,
    meta bytea[] NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
",
    },
];

/// The schema version this build needs.
pub const SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

const VERSION_TABLE: &str = "
CREATE SCHEMA IF NOT EXISTS privault_keys;
CREATE TABLE IF NOT EXISTS privault_keys.schema_version (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);";

/// The highest version applied (0 for an empty database).
pub async fn current(client: &Client, target: &str) -> Result<u32, StoreError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('privault_keys.schema_version') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| pg_error(target, &e))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let version: Option<i32> = client
        .query_one("SELECT max(version) FROM privault_keys.schema_version", &[])
        .await
        .map_err(|e| pg_error(target, &e))?
        .get(0);
    Ok(version.map_or(0, |v| v as u32))
}

/// Applies every migration not applied yet; returns the version reached. A database at a newer
/// version than this build knows is refused.
pub async fn apply(client: &mut Client, target: &str) -> Result<u32, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_error(target, &e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(|e| pg_error(target, &e))?;
    // "already exists, skipping" notices at every start are noise.
    tx.batch_execute(&format!(
        "SET LOCAL client_min_messages = warning; {VERSION_TABLE}"
    ))
    .await
    .map_err(|e| pg_error(target, &e))?;
    let found: Option<i32> = tx
        .query_one("SELECT max(version) FROM privault_keys.schema_version", &[])
        .await
        .map_err(|e| pg_error(target, &e))?
        .get(0);
    let found = found.map_or(0, |v| v as u32);
    if found > super::SCHEMA_VERSION {
        return Err(StoreError::Postgres {
            target: target.to_owned(),
            message: format!(
                "the schema is at version {found}, newer than this version of privault knows \
                 ({})",
                super::SCHEMA_VERSION
            ),
        });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > found) {
        tx.batch_execute(migration.sql)
            .await
            .map_err(|e| pg_error(target, &e))?;
        tx.execute(
            "INSERT INTO privault_keys.schema_version (version, name) VALUES ($1, $2)",
            &[&(migration.version as i32), &migration.name],
        )
        .await
        .map_err(|e| pg_error(target, &e))?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied a schema migration"
        );
    }
    tx.commit().await.map_err(|e| pg_error(target, &e))?;
    Ok(super::SCHEMA_VERSION.max(found))
}
