//! The running service: opens the store, migrates it, binds the listener, serves until
//! told to stop, and sweeps expired sessions in the background. With tenants, which
//! pools it serves comes from `tenancy` (the flags and the tenants' files) and is kept
//! by `pools`, which also opens and closes them when the tenants are reloaded.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use secrecy::SecretString;
use sqlx::migrate::MigrateError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::config::{AccessConfig, DatabaseConfig, ServeConfig, UiConfig};
use crate::core::clock::{Clock, SystemClock};
use crate::core::outbox::{Outbox, Transport};
use crate::core::password::PasswordHasher;
use crate::core::users::Users;
use crate::domain::TenantName;
use crate::error::chain;
use crate::http::access::AccessPolicy;
use crate::http::connection::{Activity, ConnectionLimits, Full, Timeouts, Watched};
use crate::http::guard::{Guard, GuardConfig};
use crate::http::health;
use crate::http::tenants::TenantSelection;
use crate::http::ui::{Asset, UiSettings};
use crate::http::{App, AppState, Everyone};
use crate::metrics::{Argon2Metrics, Metrics, Scrape};
use crate::store::{DatabaseUrl, SchemaError, SqlStore, StoreError};

mod pools;
mod tenancy;

use pools::{PoolMaker, Serving, SharedParts};
pub use pools::{Reloaded, Reloader};
use tenancy::TenancyPlan;

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
/// its schema is this binary's. A missing SQLite file is created, unless `--no-migrate`
/// promises an existing database.
pub async fn open_store(config: &DatabaseConfig) -> Result<SqlStore, StartError> {
    let store = connect_store(config, !config.no_migrate).await?;
    prepare_schema(&store, config).await?;
    Ok(store)
}

/// The first pause between two attempts to open the database at start, and the longest.
const DB_RETRY_FIRST: Duration = Duration::from_millis(250);
const DB_RETRY_MAX: Duration = Duration::from_secs(5);

/// As [`open_store`], but a database that does not answer (PostgreSQL down or not yet
/// up, a SQLite directory not yet mounted) is tried again with backoff for up to
/// `wait`. Meanwhile `listener` is served by [`health::starting_routes`]: alive, not
/// ready, 503 for every method. Any other error (a wrong password, a newer schema)
/// stops the start at once.
pub async fn open_store_waiting(
    config: &DatabaseConfig,
    listener: &TcpListener,
    wait: Duration,
) -> Result<SqlStore, StartError> {
    let deadline = tokio::time::Instant::now() + wait;
    let attempts = async {
        let mut pause = DB_RETRY_FIRST;
        loop {
            match open_store(config).await {
                Err(StartError::Database { url, source })
                    if source.outage().is_some()
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::warn!(
                        listen = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
                        database = %url,
                        error = %chain(&source),
                        retry_in = ?pause,
                        "the database does not answer yet; /health/ready answers 503 until it does"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(DB_RETRY_MAX);
                }
                other => return other,
            }
        }
    };
    let graceful = GracefulShutdown::new();
    let opened = tokio::select! {
        opened = attempts => opened,
        never = serve_starting(listener, &graceful) => match never {},
    };
    // Connections made while waiting finish the answer they are writing and close.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    });
    opened
}

/// Answers every connection with [`health::starting_routes`], until dropped.
async fn serve_starting(
    listener: &TcpListener,
    graceful: &GracefulShutdown,
) -> std::convert::Infallible {
    let routes = health::starting_routes();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).keep_alive(false);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let routes = routes.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let routes = routes.clone();
            async move {
                let response = match routes.oneshot(request.map(axum::body::Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), connection).await;
        });
    }
}

/// As [`open_store`], but never creates a database: for reading one (`export`).
pub async fn open_existing_store(config: &DatabaseConfig) -> Result<SqlStore, StartError> {
    let store = connect_store(config, false).await?;
    prepare_schema(&store, config).await?;
    Ok(store)
}

async fn prepare_schema(store: &SqlStore, config: &DatabaseConfig) -> Result<(), StartError> {
    if config.no_migrate {
        store.check_schema().await?;
    } else {
        store.migrate().await.map_err(StartError::Migrate)?;
    }
    Ok(())
}

/// Opens the configured store without touching its schema.
pub async fn connect_store(config: &DatabaseConfig, create: bool) -> Result<SqlStore, StartError> {
    let url = config.url.for_tenant(config.tenant.as_ref());
    if let DatabaseUrl::Sqlite(path) = &url {
        if !create && !path.exists() {
            return Err(StartError::Config(format!(
                "there is no database file at {}",
                path.display()
            )));
        }
    }
    SqlStore::connect(&url, &config.pool(), create)
        .await
        .map_err(|source| StartError::Database { url, source })
}

/// The core on a database, for the admin commands (`users-service user ...`): the
/// service's rules (password policy and hashing under `config.passwords`, limits)
/// without HTTP, and without a mail sender.
pub async fn open_core(
    database: &DatabaseConfig,
    passwords: &crate::config::PasswordConfig,
) -> Result<(Arc<Users>, Arc<SqlStore>), StartError> {
    let mut config = ServeConfig::new(database.url.clone());
    config.database = database.clone();
    config.passwords = passwords.clone();
    let settings = config.settings().map_err(StartError::Config)?;
    let hasher = PasswordHasher::new(config.hash_params(), 1)
        .map_err(|e| StartError::Config(e.to_string()))?;
    let store = Arc::new(open_store(database).await?);
    let pool: Arc<dyn crate::metrics::PoolGauge> = store.clone();
    let metrics = Arc::new(Metrics::new(Arc::downgrade(&pool), &Argon2Metrics::new()));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mailer = config.mailer().map_err(StartError::Config)?;
    let outbox = Arc::new(Outbox::new(
        store.clone(),
        Transport::Mail(mailer),
        clock.clone(),
        config.outbox_config(),
    ));
    let users = Arc::new(Users::new(
        store.clone(),
        Arc::new(hasher),
        clock,
        settings,
        outbox,
        metrics,
    ));
    Ok((users, store))
}

pub struct Server {
    listener: TcpListener,
    /// `--metrics-listen`: `/metrics` alone, without the admin key.
    metrics_listener: Option<TcpListener>,
    scrape: Arc<Scrape>,
    app: Arc<App>,
    /// The pools: one without tenants; with tenants, one per tenant, in the order of
    /// the tenants' list.
    serving: Arc<Serving>,
    /// The first pool's core and store at start (with tenants, the first tenant's).
    first: (Arc<Users>, Arc<SqlStore>),
    request_timeout: Duration,
    connections: Arc<ConnectionLimits>,
    timeouts: Timeouts,
}

/// A file of the pages' look, read once at start.
fn read_look(what: &str, path: &std::path::Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(path)
        .map_err(|e| StartError::Config(format!("cannot read the {what} {}: {e}", path.display())))
}

fn stylesheet_asset(path: &std::path::Path) -> Result<Asset, StartError> {
    Ok(Asset::new(
        "text/css; charset=utf-8",
        read_look("stylesheet", path)?,
    ))
}

/// The logo's media type, from its file's extension.
fn logo_kind(path: &std::path::Path) -> Option<&'static str> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => Some("image/png"),
        Some("svg") => Some("image/svg+xml"),
        Some("jpg" | "jpeg") => Some("image/jpeg"),
        Some("webp") => Some("image/webp"),
        _ => None,
    }
}

fn logo_asset(path: &std::path::Path) -> Result<Asset, StartError> {
    let kind = logo_kind(path).ok_or_else(|| {
        StartError::Config(format!(
            "the logo {} is not a .png, .svg, .jpg or .webp file",
            path.display()
        ))
    })?;
    Ok(Asset::new(kind, read_look("logo", path)?))
}

/// The hosted pages' settings: the operator's files are read once, at start-up.
fn ui_settings(
    config: &UiConfig,
    public_url: Option<&url::Url>,
    redirect_allowlist: &[String],
    credentialed: &[String],
) -> Result<UiSettings, StartError> {
    let stylesheet = config
        .ui_stylesheet
        .as_deref()
        .map(stylesheet_asset)
        .transpose()?;
    let logo = config.ui_logo.as_deref().map(logo_asset).transpose()?;
    let mut return_origins = redirect_allowlist.to_vec();
    return_origins.extend(credentialed.iter().cloned());
    Ok(UiSettings {
        title: config.ui_title.clone(),
        stylesheet,
        logo,
        secure_cookies: public_url.is_some_and(|u| u.scheme() == "https"),
        return_origins,
        tenant: None,
        cookies: Default::default(),
    })
}

/// The admin key from the environment or from a file, if any.
fn admin_key(access: &AccessConfig) -> Result<Option<SecretString>, StartError> {
    if let Some(path) = &access.api_key_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            StartError::Config(format!(
                "cannot read the admin key file {}: {e}",
                path.display()
            ))
        })?;
        let key = text.lines().next().unwrap_or("").trim().to_string();
        return Ok(Some(SecretString::from(key)));
    }
    Ok(access.api_key.clone().map(SecretString::from))
}

/// Refuses tenants' pools (or the only pool) that would answer on a public address
/// without an admin key, unless that is asked for.
fn check_keys(
    config: &ServeConfig,
    access: &AccessPolicy,
    plan: &TenancyPlan,
    policy_of: impl Fn(Option<&TenantName>) -> AccessPolicy,
) -> Result<(), StartError> {
    if access.has_key() || config.listen.ip().is_loopback() || config.access.allow_unauthenticated {
        return Ok(());
    }
    for tenant in &plan.pools {
        if !policy_of(tenant.as_ref()).has_key() {
            let whose = tenant
                .as_ref()
                .map_or_else(String::new, |t| format!(" (tenant {t} has none)"));
            return Err(StartError::Config(format!(
                "refusing to listen on {} without an admin key{whose}: set \
                 USERS_API_KEY or --api-key-file, or pass --allow-unauthenticated",
                config.listen
            )));
        }
    }
    Ok(())
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
        let access = AccessPolicy::new(
            admin_key(&config.access)?,
            &config.access.public_methods,
            config.access.open_signup,
        )
        .map_err(StartError::Config)?;
        let tenancy = TenancyPlan::new(config)?;
        let policy_of = |tenant: Option<&TenantName>| match tenant {
            Some(tenant) => access.for_tenant(tenant, &tenancy.keys_of(tenant)),
            None => access.clone(),
        };
        check_keys(config, &access, &tenancy, policy_of)?;
        let mut settings = config.settings().map_err(StartError::Config)?;
        // The mail and webhook senders, checked before anything is opened.
        config.mailer().map_err(StartError::Config)?;
        config.webhooks().map_err(StartError::Config)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // One hashing pool serves every tenant; its gauges are the process's.
        let argon2 = Argon2Metrics::new();
        let hasher = Arc::new(
            PasswordHasher::with_nice(config.hash_params(), threads, config.passwords.hash_nice)
                .map_err(|e| StartError::Config(e.to_string()))?
                .with_metrics(argon2.clone()),
        );

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        if config.mail.public_url.is_none() {
            // The address really bound: the configured port may be 0.
            if let Ok(bound) = listener.local_addr() {
                settings.links.public_url = format!("http://{bound}");
            }
            if !config.listen.ip().is_loopback() {
                tracing::warn!(
                    public_url = %settings.links.public_url,
                    "USERS_PUBLIC_URL is not set: verification links point at the listen \
                     address, which users' browsers may not reach"
                );
            }
        }
        let public_url = url::Url::parse(&settings.links.public_url).ok();
        let redirect_allowlist = settings.links.redirect_allowlist.clone();
        let process_metrics = tenancy.on.then(|| Arc::new(Metrics::process(&argon2)));

        let request_timeout = Duration::from_secs(config.request_timeout);
        let guard = Arc::new(
            Guard::new(GuardConfig {
                cors_origins: &config.cors_origins,
                has_admin_key: tenancy
                    .pools
                    .iter()
                    .any(|tenant| policy_of(tenant.as_ref()).has_key()),
                listen: listener.local_addr().unwrap_or(config.listen),
                public_url: public_url.as_ref(),
                allowed_hosts: &config.access.allowed_hosts,
            })
            .map_err(StartError::Config)?,
        );
        let ui = Arc::new(ui_settings(
            &config.ui,
            public_url.as_ref(),
            &redirect_allowlist,
            guard.credentialed_origins(),
        )?);
        let scrape = Arc::new(Scrape::new(Vec::new()));
        let maker = PoolMaker {
            config: config.clone(),
            clock,
            hasher,
            argon2,
            settings,
            access: access.clone(),
            ui,
            shared: SharedParts {
                trusted_proxies: Arc::new(config.access.trusted_proxies.clone()),
                request_timeout,
                guard: guard.clone(),
                scrape: scrape.clone(),
                metrics_on_main: metrics_listener.is_none(),
                everyone: Arc::new(Everyone::default()),
            },
        };
        let mut pools = Vec::with_capacity(tenancy.pools.len());
        for tenant in &tenancy.pools {
            let first = pools.is_empty();
            pools.push(
                maker
                    .open(tenant.as_ref(), &tenancy, Some(&listener), first)
                    .await?,
            );
        }
        if let Err(why) = crate::core::users::passkeys::relying_party(
            &maker.settings.links.public_url,
            &maker.settings.passkeys,
        ) {
            tracing::info!("passkeys are off: they {why}");
        }
        match maker.settings.sealing.current() {
            Some(key) => tracing::info!(key = %key, "TOTP secrets are encrypted at rest"),
            None => tracing::info!(
                "TOTP secrets are stored in clear: --encryption-key encrypts them at rest"
            ),
        }
        let mut states: Vec<(Option<TenantName>, AppState)> = pools
            .iter()
            .map(|pool| (pool.tenant.clone(), maker.state(pool, &tenancy)))
            .collect();
        let app = Arc::new(match &process_metrics {
            Some(process) => App::with_tenants(
                states
                    .into_iter()
                    .filter_map(|(tenant, state)| Some((tenant?, state)))
                    .collect(),
                TenantSelection {
                    keys: tenancy.keys.clone(),
                    default: config.tenancy.default_tenant.clone(),
                },
                guard,
                process.clone(),
            ),
            None => match states.pop() {
                Some((_, state)) => App::new(state),
                None => return Err(StartError::Config("no user pool to serve".into())),
            },
        });
        if !access.has_key() {
            tracing::warn!(
                "no admin key is set: every method, Delete and Search included, is open to \
                 anyone who can reach this address"
            );
        }
        tracing::info!(
            listen = %listener.local_addr().unwrap_or(config.listen),
            database = %config.database.url,
            tenants = pools.iter().filter_map(|p| p.tenant.as_ref().map(ToString::to_string)).collect::<Vec<_>>().join(","),
            "users-service ready"
        );
        if let Some(listener) = &metrics_listener {
            tracing::info!(
                metrics_listen = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
                "metrics are served at /metrics on their own address"
            );
        }
        let first = match pools.first() {
            Some(pool) => (pool.users.clone(), pool.store.clone()),
            None => return Err(StartError::Config("no user pool to serve".into())),
        };
        let serving = Arc::new(Serving::new(
            maker,
            app.clone(),
            process_metrics,
            pools,
            &tenancy,
        ));
        Ok(Self {
            listener,
            metrics_listener,
            scrape,
            app,
            serving,
            first,
            request_timeout,
            connections: ConnectionLimits::new(
                config.max_connections,
                config.max_connections_per_ip(),
                config.access.trusted_proxies.clone(),
            ),
            timeouts: Timeouts {
                first_request: Duration::from_secs(config.new_connection_timeout),
                keep_alive: Duration::from_secs(config.keep_alive_timeout),
                headers: request_timeout,
            },
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// What reloads the tenants of this service while it runs (`--tenants-file`).
    pub fn reloader(&self) -> Reloader {
        Reloader(self.serving.clone())
    }

    /// The core (with tenants, the first tenant's), for embedding programs and tests.
    pub fn users(&self) -> Arc<Users> {
        self.first.0.clone()
    }

    /// `tenant`'s core, for embedding programs and tests.
    pub fn tenant_users(&self, tenant: &TenantName) -> Option<Arc<Users>> {
        self.serving
            .pools()
            .into_iter()
            .find(|(t, _, _)| t.as_ref() == Some(tenant))
            .map(|(_, users, _)| users)
    }

    /// The address `/metrics` is served on alone, with `--metrics-listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The store (with tenants, the first tenant's), for embedding programs and tests.
    pub fn store(&self) -> Arc<SqlStore> {
        self.first.1.clone()
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    ///
    /// At most `max_connections` are served at once, and at most a share of them from
    /// one client address: one more is answered 503 and closed rather than queued, so
    /// a flood of sockets cannot exhaust the process. A connection that sends no
    /// request in time, or whose request headers do not arrive in time, is closed (see
    /// `http::connection`).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let metrics = self.scrape.clone();
        let metrics_server = self.metrics_listener.map(|listener| {
            tokio::spawn(async move {
                let routes = crate::http::metrics_routes(metrics);
                if let Err(err) = axum::serve(listener, routes).await {
                    tracing::warn!(error = %err, "the metrics listener stopped");
                }
            })
        });
        // Each pool's sweeper and senders, and with --tenants-watch, the tenants' files'
        // watch.
        self.serving.start();
        self.serving.watch();
        let graceful = GracefulShutdown::new();
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // The connection's own timers (`Watched`) replace hyper's header timeout, which
        // would also cut idle keep-alive connections at the request timeout.
        http1.timer(TokioTimer::new()).header_read_timeout(None);
        let shutdown = std::pin::pin!(shutdown);
        let mut shutdown = shutdown;
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off briefly rather
                        // than spin.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let slot = match self.connections.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(full) => {
                    tokio::spawn(refuse(stream, full));
                    continue;
                }
            };
            let app = self.app.clone();
            let activity = Arc::new(Activity::default());
            let serving = activity.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                let (app, serving) = (app.clone(), serving.clone());
                async move {
                    let response = serving.serve(app.handle(request)).await;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let io = TokioIo::new(Watched::new(stream, activity, self.timeouts));
            let connection = graceful.watch(http1.serve_connection(io, service));
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                drop(slot);
            });
        }
        drop(self.listener);
        // Requests in flight finish; idle keep-alive connections are closed.
        if tokio::time::timeout(self.request_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("some connections were still busy at the shutdown deadline");
        }
        if let Some(server) = metrics_server {
            server.abort();
        }
        self.serving
            .stop(tokio::time::Instant::now() + self.request_timeout)
            .await;
        tracing::info!("users-service stopped");
        Ok(())
    }
}

/// Answers a connection over a limit with 503 in the Micro error shape and closes it.
async fn refuse(mut stream: tokio::net::TcpStream, full: Full) {
    let detail = match full {
        Full::Server => "too many connections; retry shortly",
        Full::Address => "too many connections from this address; retry shortly",
    };
    let body = format!(
        r#"{{"id":"users.Unknown","code":503,"detail":"{detail}","status":"Service Unavailable"}}"#
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         cache-control: no-store\r\nx-content-type-options: nosniff\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    tracing::warn!(event = "connection_refused", limit = ?full, "connection limit reached");
}

async fn sweep(users: Arc<Users>) {
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_INTERVAL, SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match users.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "swept expired sessions"),
            Err(err) => tracing::warn!(error = %err, "sweeping expired sessions failed"),
        }
    }
}

/// Registers for Ctrl-C (SIGINT) and SIGTERM now, and returns a future that completes
/// when either arrives. Registering before the service announces itself means a signal
/// sent right after start-up is a clean stop, never the default abrupt exit.
/// Must be called inside the Tokio runtime.
#[cfg(unix)]
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutdown requested; finishing requests in flight");
    })
}

/// SIGHUP, registered: from now on it no longer stops the process.
#[cfg(unix)]
pub struct Hangups(tokio::signal::unix::Signal);

/// Registers for SIGHUP now, before the service announces itself, so that one sent
/// right after start-up reloads rather than stops it. Must be called inside the Tokio
/// runtime.
#[cfg(unix)]
pub fn hangup_signal() -> io::Result<Hangups> {
    use tokio::signal::unix::{signal, SignalKind};
    Ok(Hangups(signal(SignalKind::hangup())?))
}

#[cfg(unix)]
impl Server {
    /// Reloads the tenants at each SIGHUP (see [`Reloader`]), for as long as the
    /// process runs. A reload that fails is logged, and the service goes on as it was.
    pub fn reload_on(&self, mut hangups: Hangups) {
        let reloader = self.reloader();
        tokio::spawn(async move {
            while hangups.0.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the tenants");
                if let Err(err) = reloader.reload().await {
                    tracing::error!(error = %chain(&err), "the tenants were not reloaded; the service goes on as it was");
                }
            }
        });
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested; finishing requests in flight");
    })
}
