//! `privault db`: the PostgreSQL schema's migrations, applied by hand before a rollout (every
//! node also applies them at start, one at a time under an advisory lock).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use privault::store::postgres::{MIGRATIONS, SCHEMA_VERSION};
use privault::store::{PgConfig, PgStore};

/// How to reach the database.
#[derive(Args, Debug)]
pub struct Database {
    /// PostgreSQL URL, as for `serve --database-url`.
    #[arg(long, env = "PRIVAULT_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// PEM file of the CA certificates the database's certificate must chain to.
    #[arg(long, env = "PRIVAULT_DATABASE_CA")]
    database_ca: Option<PathBuf>,
}

impl Database {
    fn config(&self) -> PgConfig {
        let mut config = PgConfig::new(self.database_url.clone());
        config.ca_file = self.database_ca.clone();
        config.pool_size = 1;
        config
    }
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Apply every migration the database lacks (creates the schemas `privault` and
    /// `privault_keys` on an empty database).
    Migrate(Database),
    /// Print the schema version of the database and of this build.
    Status(Database),
}

pub fn run(command: DbCommand) -> anyhow::Result<ExitCode> {
    match command {
        DbCommand::Migrate(db) => {
            let (before, after) = PgStore::migrate(&db.config())?;
            let applied: Vec<_> = MIGRATIONS
                .iter()
                .filter(|m| m.version > before && m.version <= after)
                .collect();
            if super::json() {
                super::print_json(&serde_json::json!({
                    "from": before,
                    "to": after,
                    "applied": applied.iter().map(|m| m.version).collect::<Vec<_>>(),
                }))?;
            } else if applied.is_empty() {
                println!("the schema is at version {after}: nothing to apply");
            } else {
                for m in applied {
                    println!("applied {}: {}", m.version, m.name);
                }
                println!("the schema is at version {after}");
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Status(db) => {
            let found = PgStore::schema_version(&db.config())?;
            if super::json() {
                super::print_json(&serde_json::json!({
                    "database": found,
                    "this_build": SCHEMA_VERSION,
                }))?;
            } else {
                println!("database schema version {found}; this build needs {SCHEMA_VERSION}");
            }
            Ok(if found == SCHEMA_VERSION {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}

/// The host's name, the default node id.
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
