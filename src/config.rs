//! Command-line and environment configuration. Every flag has an environment variable;
//! `users-service --help` lists them all.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::password::HashParams;
use crate::store::{DatabaseUrl, PoolConfig};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://users.db";
/// Seven days.
pub const DEFAULT_SESSION_TTL: u64 = 604_800;
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 10;
pub const DEFAULT_DB_ACQUIRE_TIMEOUT: u64 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "users-service",
    version,
    about = "User accounts and password sign-in over HTTP, a drop-in for the Micro `users` service",
    long_about = None,
    args_conflicts_with_subcommands = true,
    after_help = "Without a command, serves the API (the options above)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations this binary carries, then exit
    Migrate {
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Write every user (with its password hash) and every live session to standard
    /// output as JSON lines
    Export {
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Read JSON lines written by `export` from standard input and add them, all or
    /// nothing
    Import {
        #[command(flatten)]
        database: DatabaseConfig,

        /// Skip users and sessions whose id already exists instead of refusing the import
        #[arg(long)]
        skip_existing: bool,
    },
}

/// Settings of the HTTP server.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address (IP:PORT) to listen on
    #[arg(long, env = "USERS_LISTEN", value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Lifetime of a session, in seconds
    #[arg(
        long,
        env = "USERS_SESSION_TTL",
        value_name = "SECONDS",
        default_value_t = DEFAULT_SESSION_TTL,
        value_parser = clap::value_parser!(u64).range(1..=(i64::MAX as u64))
    )]
    pub session_ttl: u64,

    /// Origins allowed to call the API from a browser, comma-separated (default: any origin)
    #[arg(
        long,
        env = "USERS_CORS_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
}

/// Settings of the database connection.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Database to use: sqlite://PATH (created when missing) or postgres://USER@HOST/DB
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "URL",
        default_value = DEFAULT_DATABASE_URL
    )]
    pub url: DatabaseUrl,

    /// Most database connections the pool opens
    #[arg(
        long = "db-max-connections",
        env = "USERS_DB_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = DEFAULT_DB_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,

    /// Seconds a request waits for a database connection before it is answered 503
    #[arg(
        long = "db-acquire-timeout",
        env = "USERS_DB_ACQUIRE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = DEFAULT_DB_ACQUIRE_TIMEOUT,
        value_parser = clap::value_parser!(u64).range(1..=60)
    )]
    pub acquire_timeout: u64,

    /// Do not migrate on start; refuse to start unless the schema is exactly this
    /// binary's (for deployments that run `users-service migrate` separately)
    #[arg(
        long,
        env = "USERS_NO_MIGRATE",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_migrate: bool,
}

impl DatabaseConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: DatabaseUrl) -> Self {
        Self {
            url,
            max_connections: DEFAULT_DB_MAX_CONNECTIONS,
            acquire_timeout: DEFAULT_DB_ACQUIRE_TIMEOUT,
            no_migrate: false,
        }
    }

    pub fn pool(&self) -> PoolConfig {
        PoolConfig {
            max_connections: self.max_connections,
            acquire_timeout: Duration::from_secs(self.acquire_timeout),
        }
    }
}

impl ServeConfig {
    /// Defaults for everything but the database, listening on an ephemeral loopback
    /// port: what an embedding program or a test starts from.
    pub fn new(database: DatabaseUrl) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: DatabaseConfig::new(database),
            session_ttl: DEFAULT_SESSION_TTL,
            cors_origins: Vec::new(),
        }
    }

    pub fn hash_params(&self) -> HashParams {
        HashParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let cli = Cli::try_parse_from(["users-service"]).unwrap();
        assert!(cli.command.is_none());
        // The environment may override these; only check when it does not.
        if std::env::var_os("USERS_LISTEN").is_none() {
            assert_eq!(cli.serve.listen.to_string(), "127.0.0.1:8080");
        }
        if std::env::var_os("DATABASE_URL").is_none() {
            assert_eq!(
                cli.serve.database.url,
                DatabaseUrl::Sqlite("users.db".into())
            );
        }
        if std::env::var_os("USERS_SESSION_TTL").is_none() {
            assert_eq!(cli.serve.session_ttl, 604_800);
        }
    }

    #[test]
    fn subcommands_take_the_database_options() {
        let cli = Cli::try_parse_from([
            "users-service",
            "import",
            "--database-url",
            "postgres://db/users",
            "--skip-existing",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Import {
                database,
                skip_existing,
            }) => {
                assert!(skip_existing);
                assert!(matches!(database.url, DatabaseUrl::Postgres(_)));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["users-service", "migrate", "--listen", "x"]).is_err());
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let err = Cli::try_parse_from(["users-service", "--session-ttl", "0"]).unwrap_err();
        assert!(err.to_string().contains("--session-ttl"), "{err}");
        let err =
            Cli::try_parse_from(["users-service", "--database-url", "mysql://x"]).unwrap_err();
        assert!(
            err.to_string().contains("unsupported database URL"),
            "{err}"
        );
    }
}
