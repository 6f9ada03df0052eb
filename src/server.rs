//! The running service: opens the store, migrates it, binds the listener, serves until
//! told to stop, and sweeps expired sessions in the background.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::Router;
use sqlx::migrate::MigrateError;
use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};
use crate::config::{DatabaseConfig, ServeConfig};
use crate::http::{self, AppState};
use crate::password::PasswordHasher;
use crate::service::Users;
use crate::store::{DatabaseUrl, SchemaError, SqlStore, StoreError};

/// How often expired sessions are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Why the service could not start. Each displays as one line naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot open the database {url}")]
    Database {
        url: DatabaseUrl,
        #[source]
        source: StoreError,
    },
    #[error("{}", describe_migrate_error(.0))]
    Migrate(#[source] MigrateError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

fn describe_migrate_error(err: &MigrateError) -> String {
    match err {
        MigrateError::VersionMissing(version) => format!(
            "the database schema is newer than this binary (it has migration {version}, \
             which this version of users-service does not know): upgrade users-service"
        ),
        _ => "cannot migrate the database".to_string(),
    }
}

/// Opens the configured store and migrates it, or with `--no-migrate` only checks that
/// its schema is this binary's.
pub async fn open_store(config: &DatabaseConfig) -> Result<SqlStore, StartError> {
    let store = connect_store(config).await?;
    if config.no_migrate {
        store.check_schema().await?;
    } else {
        store.migrate().await.map_err(StartError::Migrate)?;
    }
    Ok(store)
}

/// Opens the configured store without touching its schema.
pub async fn connect_store(config: &DatabaseConfig) -> Result<SqlStore, StartError> {
    SqlStore::connect(&config.url, &config.pool())
        .await
        .map_err(|source| StartError::Database {
            url: config.url.clone(),
            source,
        })
}

pub struct Server {
    listener: TcpListener,
    router: Router,
    users: Arc<Users>,
    store: Arc<SqlStore>,
}

impl Server {
    pub async fn build(config: &ServeConfig) -> Result<Self, StartError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Server::build`], reading time from `clock` (tests move it forward).
    pub async fn build_with_clock(
        config: &ServeConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        let cors_origins = config
            .cors_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(|o| {
                HeaderValue::from_str(o)
                    .map_err(|_| StartError::Config(format!("invalid CORS origin {o:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hasher = PasswordHasher::new(config.hash_params(), threads)
            .map_err(|e| StartError::Config(e.to_string()))?;

        let store = Arc::new(open_store(&config.database).await?);
        let users = Arc::new(Users::new(store.clone(), hasher, clock, config.session_ttl));
        let router = http::router(
            AppState {
                users: users.clone(),
            },
            cors_origins,
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        tracing::info!(
            listen = %listener.local_addr().unwrap_or(config.listen),
            database = %config.database.url,
            "users-service ready"
        );
        Ok(Self {
            listener,
            router,
            users,
            store,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The core, for embedding programs and tests.
    pub fn users(&self) -> Arc<Users> {
        self.users.clone()
    }

    /// The store, for embedding programs and tests.
    pub fn store(&self) -> Arc<SqlStore> {
        self.store.clone()
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let sweeper = tokio::spawn(sweep_sessions(self.users.clone()));
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        sweeper.abort();
        self.store.close().await;
        tracing::info!("users-service stopped");
        served
    }
}

async fn sweep_sessions(users: Arc<Users>) {
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_INTERVAL, SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match users.sweep_expired_sessions().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "swept expired sessions"),
            Err(err) => tracing::warn!(error = %err, "sweeping expired sessions failed"),
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; finishing requests in flight");
}
