//! Command-line and environment configuration. Every flag has an environment variable;
//! `users-service --help` lists them all.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::core::limits::LimitConfig;
use crate::core::mail::Mailer;
use crate::core::outbox::OutboxConfig;
use crate::core::password::formats::FirebaseProject;
use crate::core::password::{CostLimits, HashParams, OWASP_MIN_M_KIB, OWASP_MIN_P, OWASP_MIN_T};
use crate::core::policy::PasswordPolicy;
use crate::core::sealing::SealingKeys;
use crate::core::transfer::sources::Source;
use crate::core::users::{LinkSettings, Settings};
use crate::core::webhooks::WebhookSender;
use crate::domain::TenantName;
use crate::store::{tenant_schema, DatabaseUrl, PoolConfig};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://users.db";
/// Seven days.
pub const DEFAULT_SESSION_TTL: u64 = 604_800;
pub const DEFAULT_UI_TITLE: &str = "users-service";
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 10;
pub const DEFAULT_DB_ACQUIRE_TIMEOUT: u64 = 3;
/// MiB of point reads' answers kept on SQLite (`--db-read-cache-mib`).
pub const DEFAULT_DB_READ_CACHE_MIB: u32 = 32;
pub const DEFAULT_PUBLIC_METHODS: &str =
    "Create,Login,Logout,ReadSession,UpdatePassword,VerifyEmail,ResetPassword,VerifyToken";
pub const DEFAULT_LOGIN_MAX_FAILURES: u32 = 5;
pub const DEFAULT_LOGIN_WINDOW: u64 = 900;
pub const DEFAULT_LOGIN_LOCKOUT: u64 = 60;
pub const DEFAULT_CREATE_PER_HOUR: u32 = 20;
pub const DEFAULT_MAILS_PER_HOUR: u32 = 5;
pub const DEFAULT_PASSKEY_SIGN_INS_PER_HOUR: u32 = 300;
pub const DEFAULT_MAIL_FROM: &str = "no-reply@localhost";
pub const DEFAULT_MAGIC_LINK_TTL: u64 = 60;
pub const DEFAULT_MAIL_MAX_ATTEMPTS: u32 = 8;
pub const DEFAULT_MAIL_RETRY_DELAY: u64 = 10;
pub const DEFAULT_PASSWORD_MIN_LENGTH: usize = 8;
pub const DEFAULT_HASH_NICE: u8 = 10;
pub const DEFAULT_REQUEST_TIMEOUT: u64 = 30;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_NEW_CONNECTION_TIMEOUT: u64 = 10;
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: u64 = 60;
pub const DEFAULT_DB_WAIT: u64 = 60;
pub const DEFAULT_AUDIT_RETENTION_DAYS: u64 = 90;

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

    /// How log lines are written to standard error: `text` for people, or `json`, one
    /// object per line with stable field names (docs/operations.md)
    #[arg(
        long,
        global = true,
        env = "USERS_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// The format of the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations this binary carries, then exit
    Migrate {
        #[command(flatten)]
        database: DatabaseConfig,

        #[command(flatten)]
        each: EachTenant,
    },
    /// Write every user (with its password hash), every live session, the ids of deleted
    /// accounts, second factors, passkeys and the service's own keys to standard output
    /// as JSON lines
    Export {
        #[command(flatten)]
        database: DatabaseConfig,

        /// The keys TOTP secrets are sealed under, to write them out in clear
        #[command(flatten)]
        sealing: SealingConfig,
    },
    /// Read JSON lines written by `export`, or another system's export (--from), from
    /// standard input and add them, all or nothing
    Import {
        #[command(flatten)]
        database: DatabaseConfig,

        /// Skip the records the database has already (users and sessions by id, second
        /// factors, passkeys; a service key of its own is kept) instead of refusing the
        /// import
        #[arg(long)]
        skip_existing: bool,

        /// What standard input holds: this service's export, or another system's
        /// (docs/moving-in.md says how to make each)
        #[arg(long, value_enum, default_value_t = Source::UsersService, value_name = "SYSTEM")]
        from: Source,

        #[command(flatten)]
        limits: HashLimitsConfig,

        #[command(flatten)]
        firebase: FirebaseConfig,

        /// The keys to seal the TOTP secrets it brings under
        #[command(flatten)]
        sealing: SealingConfig,
    },
    /// Encrypt every stored TOTP secret under the first --encryption-key: those stored
    /// in clear (before a key was set) and those under an older key, given after it.
    /// Safe while the service runs
    Reseal {
        #[command(flatten)]
        database: DatabaseConfig,

        #[command(flatten)]
        each: EachTenant,

        #[command(flatten)]
        sealing: SealingConfig,
    },
    /// Show the audit trail's events, newest first
    Audit {
        /// Only this user's events
        #[arg(long)]
        user_id: Option<String>,
        /// Only events of this kind (account.created, login.failed, ...)
        #[arg(long)]
        kind: Option<String>,
        /// Only events at or after this time (seconds since the epoch)
        #[arg(long, value_name = "SECONDS")]
        since: Option<i64>,
        /// Only events before this time (seconds since the epoch)
        #[arg(long, value_name = "SECONDS")]
        until: Option<i64>,
        /// Only events older than this event id: the `next` of the previous page
        #[arg(long, value_name = "ID")]
        before: Option<i64>,
        /// Most events to show (1-1000)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// Print the events as JSON (ListAuditEvents' answer) instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Manage accounts on the database directly, under the service's rules (password
    /// policy, hashing): for an operator at a shell, with or without the service running
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
}

/// `users-service user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account; its password is read from standard input (one line)
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
        /// The account's id (default: a new UUID)
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        common: AdminArgs,
    },
    /// Show one account
    Get {
        #[command(flatten)]
        account: AccountArg,
        #[command(flatten)]
        common: AdminArgs,
    },
    /// List accounts, oldest first
    List {
        /// Most accounts to show (1-1000)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// Accounts to skip
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        offset: i64,
        #[command(flatten)]
        common: AdminArgs,
    },
    /// Delete an account, its sessions and tokens (its id is never issued again)
    Delete {
        #[command(flatten)]
        account: AccountArg,
        #[command(flatten)]
        common: AdminArgs,
    },
    /// Set an account's password, read from standard input (one line); its sessions end
    SetPassword {
        #[command(flatten)]
        account: AccountArg,
        #[command(flatten)]
        common: AdminArgs,
    },
    /// Lift a lockout: forget the failed password and code checks counted against the
    /// account
    Unlock {
        #[command(flatten)]
        account: AccountArg,
        #[command(flatten)]
        common: AdminArgs,
    },
    /// End every session of an account
    EndSessions {
        #[command(flatten)]
        account: AccountArg,
        #[command(flatten)]
        common: AdminArgs,
    },
}

/// Which account a `user` command acts on: its id, or its username or e-mail address.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct AccountArg {
    /// The account's id
    pub id: Option<String>,
    /// The account's username, instead of its id
    #[arg(long)]
    pub username: Option<String>,
    /// The account's e-mail address, instead of its id
    #[arg(long)]
    pub email: Option<String>,
}

/// What every `user` command takes: the database, the password rules, the output.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub passwords: PasswordConfig,

    /// Print the result as JSON (the API's shapes) instead of text
    #[arg(long)]
    pub json: bool,
}

/// Settings of the HTTP server.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address (IP:PORT) to listen on
    #[arg(long, env = "USERS_LISTEN", value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Serve `GET /metrics` (Prometheus) on this address (IP:PORT) instead, without the
    /// admin key; otherwise it is served on --listen, behind the admin key when one is set
    #[arg(long, env = "USERS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Seconds to keep trying, with backoff, a database that does not answer at start
    /// (meanwhile /health/ready and the methods answer 503, /health/live 200); 0: give
    /// up at once
    #[arg(
        long,
        env = "USERS_DB_WAIT",
        value_name = "SECONDS",
        default_value_t = DEFAULT_DB_WAIT,
        value_parser = clap::value_parser!(u64).range(0..=86_400)
    )]
    pub db_wait: u64,

    /// Days the audit trail keeps an event before the sweeper deletes it (0: for ever)
    #[arg(
        long,
        env = "USERS_AUDIT_RETENTION_DAYS",
        value_name = "DAYS",
        default_value_t = DEFAULT_AUDIT_RETENTION_DAYS,
        value_parser = clap::value_parser!(u64).range(0..=36_500)
    )]
    pub audit_retention_days: u64,

    /// Lifetime of a session, in seconds
    #[arg(
        long,
        env = "USERS_SESSION_TTL",
        value_name = "SECONDS",
        default_value_t = DEFAULT_SESSION_TTL,
        value_parser = clap::value_parser!(u64).range(1..=(i64::MAX as u64))
    )]
    pub session_ttl: u64,

    /// End a session that has not been used for this many seconds (0: never). Use is
    /// recorded to the minute (or to half this time, if shorter); it never extends a
    /// session beyond --session-ttl
    #[arg(
        long,
        env = "USERS_SESSION_IDLE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..=(i64::MAX as u64))
    )]
    pub session_idle_timeout: u64,

    /// Web origins (https://app.example.com) allowed to call the API from a browser,
    /// comma-separated, or * for any; requests from other origins are refused with 403
    /// (default: any origin with an admin key, pages on this machine without one:
    /// http(s)://localhost, 127.0.0.1 and [::1] on any port)
    #[arg(
        long,
        env = "USERS_CORS_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    #[command(flatten)]
    pub access: AccessConfig,

    #[command(flatten)]
    pub limits: LimitsConfig,

    #[command(flatten)]
    pub passwords: PasswordConfig,

    #[command(flatten)]
    pub mail: MailConfig,

    #[command(flatten)]
    pub webhooks: WebhookConfig,

    #[command(flatten)]
    pub ui: UiConfig,

    #[command(flatten)]
    pub tenancy: TenancyConfig,

    #[command(flatten)]
    pub sealing: SealingConfig,

    /// Seconds a request may take, from its first byte to its answer (slow clients and
    /// slow requests are cut off)
    #[arg(
        long,
        env = "USERS_REQUEST_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = DEFAULT_REQUEST_TIMEOUT,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub request_timeout: u64,

    /// Most client connections served at once; more are answered 503 and closed
    #[arg(
        id = "max_client_connections",
        long = "max-connections",
        env = "USERS_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = DEFAULT_MAX_CONNECTIONS
    )]
    pub max_connections: usize,

    /// Most client connections one address (an IPv6 client: its /64) may hold at once;
    /// trusted proxies are exempt (default: a quarter of --max-connections)
    #[arg(
        long = "max-connections-per-ip",
        env = "USERS_MAX_CONNECTIONS_PER_IP",
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_connections_per_ip: Option<u64>,

    /// Seconds a new connection may take to start its first request before it is closed
    #[arg(
        long,
        env = "USERS_NEW_CONNECTION_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = DEFAULT_NEW_CONNECTION_TIMEOUT,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub new_connection_timeout: u64,

    /// Seconds a kept-alive connection may wait for its next request before it is closed
    #[arg(
        long,
        env = "USERS_KEEP_ALIVE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = DEFAULT_KEEP_ALIVE_TIMEOUT,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub keep_alive_timeout: u64,
}

/// Who may call which method.
#[derive(Debug, Clone, Args)]
pub struct AccessConfig {
    /// Admin key: when set, every method outside the public ones needs
    /// `Authorization: Bearer <KEY>` (prefer the environment variable or --api-key-file:
    /// a command line is visible to other local users)
    #[arg(
        long,
        env = "USERS_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,

    /// Read the admin key from this file (its first line)
    #[arg(
        long,
        env = "USERS_API_KEY_FILE",
        value_name = "PATH",
        conflicts_with = "api_key"
    )]
    pub api_key_file: Option<PathBuf>,

    /// Methods callable without the admin key, comma-separated
    #[arg(
        long,
        env = "USERS_PUBLIC_METHODS",
        value_name = "METHODS",
        value_delimiter = ',',
        default_value = DEFAULT_PUBLIC_METHODS
    )]
    pub public_methods: Vec<String>,

    /// Whether Create is public (sign-up open to anyone) when an admin key is set
    #[arg(
        long,
        env = "USERS_OPEN_SIGNUP",
        value_name = "BOOL",
        default_value_t = true,
        action = ArgAction::Set,
        value_parser = BoolishValueParser::new()
    )]
    pub open_signup: bool,

    /// Allow listening on a non-loopback address without an admin key
    #[arg(
        long,
        env = "USERS_ALLOW_UNAUTHENTICATED",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub allow_unauthenticated: bool,

    /// Proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed for the
    /// client address
    #[arg(
        long,
        env = "USERS_TRUSTED_PROXIES",
        value_name = "NETS",
        value_delimiter = ',',
        value_parser = parse_net
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// Host names (or IP addresses) the service answers for, besides loopback ones, the
    /// listen address and the host of --public-url, comma-separated, or * for any;
    /// requests naming another host in their Host header are refused with 421
    #[arg(
        long,
        env = "USERS_ALLOWED_HOSTS",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
}

/// Brute-force and sign-up limits; 0 turns one off.
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Password checks per identifier (username, e-mail or user id, as typed) within the
    /// window; when all failed, it is locked out
    #[arg(long, env = "USERS_LOGIN_MAX_FAILURES", value_name = "N", default_value_t = DEFAULT_LOGIN_MAX_FAILURES)]
    pub login_max_failures: u32,

    /// Password and reset-code checks per client address (IPv6: per /64) within the
    /// window; when all failed, it is locked out
    #[arg(long, env = "USERS_LOGIN_MAX_FAILURES_PER_IP", value_name = "N", default_value_t = DEFAULT_LOGIN_MAX_FAILURES)]
    pub login_max_failures_per_ip: u32,

    /// Seconds over which password and reset-code checks are counted
    #[arg(
        long,
        env = "USERS_LOGIN_WINDOW",
        value_name = "SECONDS",
        default_value_t = DEFAULT_LOGIN_WINDOW,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub login_window: u64,

    /// Seconds of the first lockout; a lockout after an earlier one has ended doubles it,
    /// up to a day
    #[arg(
        long,
        env = "USERS_LOGIN_LOCKOUT",
        value_name = "SECONDS",
        default_value_t = DEFAULT_LOGIN_LOCKOUT,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub login_lockout: u64,

    /// Create requests per client address per hour
    #[arg(long, env = "USERS_CREATE_PER_HOUR", value_name = "N", default_value_t = DEFAULT_CREATE_PER_HOUR)]
    pub create_per_hour: u32,

    /// E-mails of one kind (verification, password reset, magic link) per recipient
    /// address per hour
    #[arg(long, env = "USERS_MAILS_PER_HOUR", value_name = "N", default_value_t = DEFAULT_MAILS_PER_HOUR)]
    pub mails_per_hour: u32,

    /// Passkey sign-ins started without a password (StartPasskeyLogin) per client
    /// address per hour; each keeps a ceremony for 5 minutes
    #[arg(long, env = "USERS_PASSKEY_SIGN_INS_PER_HOUR", value_name = "N", default_value_t = DEFAULT_PASSKEY_SIGN_INS_PER_HOUR)]
    pub passkey_sign_ins_per_hour: u32,
}

/// Whether one service holds several isolated user pools (docs/tenancy.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tenancy {
    /// One pool: the `Micro-Namespace` header is ignored
    Off,
    /// One pool per tenant, chosen by the `Micro-Namespace` header or a tenant's own admin key
    Namespace,
}

/// Tenants (docs/tenancy.md).
#[derive(Debug, Clone, Args)]
pub struct TenancyConfig {
    /// off: one user pool; namespace: one isolated pool per tenant of --tenants, chosen
    /// per request by the Micro-Namespace header (or by a tenant's admin key)
    #[arg(
        long,
        env = "USERS_TENANCY",
        value_name = "MODE",
        value_enum,
        default_value_t = Tenancy::Off
    )]
    pub tenancy: Tenancy,

    /// The tenants, comma-separated (names of 1-32 characters: a-z first, then a-z, 0-9
    /// and _); a namespace not listed is refused, never created
    #[arg(
        long,
        env = "USERS_TENANTS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub tenants: Vec<TenantName>,

    /// In place of --tenants, a file of the tenants, one name per line (# starts a
    /// comment). The service reads it again on SIGHUP, with the tenants' other files
    /// (keys, webhooks, looks): tenants are added and removed without a restart
    #[arg(long, env = "USERS_TENANTS_FILE", value_name = "PATH")]
    pub tenants_file: Option<PathBuf>,

    /// The tenant that requests naming none are served by (the hosted pages and the
    /// admin console opened without ?namespace=); without it such requests are refused
    /// with 400
    #[arg(long, env = "USERS_DEFAULT_TENANT", value_name = "NAME")]
    pub default_tenant: Option<TenantName>,

    /// A file of tenants' own admin keys, one "TENANT KEY" pair per line (# starts a
    /// comment): such a key is the admin key of its tenant only, and selects that
    /// tenant when no Micro-Namespace header does. The --api-key stays every tenant's.
    #[arg(long, env = "USERS_TENANT_KEYS_FILE", value_name = "PATH")]
    pub tenant_keys_file: Option<PathBuf>,

    /// Every SECONDS, read the tenants' files (--tenants-file, --tenant-keys-file,
    /// --webhook-tenants-file, --ui-tenant-dir) and, when they hold something new and
    /// read the same twice in a row, reload the tenants as SIGHUP does: replicas that
    /// read the same files follow them without a signal. 0: only on SIGHUP
    #[arg(
        long,
        env = "USERS_TENANTS_WATCH",
        value_name = "SECONDS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..=86_400)
    )]
    pub tenants_watch: u64,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        Self {
            tenancy: Tenancy::Off,
            tenants: Vec::new(),
            tenants_file: None,
            default_tenant: None,
            tenant_keys_file: None,
            tenants_watch: 0,
        }
    }
}

/// The tenants `migrate` and `reseal` work on, each in turn: those `serve` is given,
/// so that a command run with the service's environment reaches every tenant.
#[derive(Debug, Clone, Default, Args)]
pub struct EachTenant {
    /// With tenancy: work on each of these tenants in turn (comma-separated), as serve
    /// takes them; --tenant, when given, narrows the command to that one
    #[arg(
        long = "tenants",
        env = "USERS_TENANTS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub tenants: Vec<TenantName>,

    /// In place of --tenants, the file of the tenants that serve's --tenants-file names
    #[arg(long = "tenants-file", env = "USERS_TENANTS_FILE", value_name = "PATH")]
    pub tenants_file: Option<PathBuf>,
}

impl EachTenant {
    /// The pools to work on: `database` alone when it names a tenant or no tenants are
    /// given; else `database` with each tenant in turn.
    pub fn pools(&self, database: &DatabaseConfig) -> Result<Vec<DatabaseConfig>, String> {
        if database.tenant.is_some() {
            return Ok(vec![database.clone()]);
        }
        let tenants = listed_tenants(&self.tenants, self.tenants_file.as_deref())?;
        if tenants.is_empty() {
            return Ok(vec![database.clone()]);
        }
        Ok(tenants
            .into_iter()
            .map(|tenant| DatabaseConfig {
                tenant: Some(tenant),
                ..database.clone()
            })
            .collect())
    }
}

/// The tenants given by `--tenants` (`listed`) or by `--tenants-file` (`file`), not both.
pub fn listed_tenants(
    listed: &[TenantName],
    file: Option<&std::path::Path>,
) -> Result<Vec<TenantName>, String> {
    match file {
        Some(_) if !listed.is_empty() => {
            Err("give the tenants by --tenants or by --tenants-file".into())
        }
        Some(path) => read_tenants_file(path),
        None => Ok(listed.to_vec()),
    }
}

/// The tenants of a tenants file (`--tenants-file`): one name per line, blank lines
/// and `#` comments skipped.
fn read_tenants_file(path: &std::path::Path) -> Result<Vec<TenantName>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the tenants file {}: {e}", path.display()))?;
    let mut tenants = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let tenant: TenantName = line
            .parse()
            .map_err(|why| format!("{}:{}: {why}", path.display(), number + 1))?;
        tenants.push(tenant);
    }
    Ok(tenants)
}

/// The keys that seal TOTP secrets at rest (src/core/sealing.rs).
#[derive(Debug, Clone, Default, Args)]
pub struct SealingConfig {
    /// Keys that encrypt TOTP secrets in the database (AES-256-GCM): base64 of 32
    /// random bytes each (`openssl rand -base64 32`), comma-separated; the first
    /// encrypts, every one decrypts. Unset: TOTP secrets are stored in clear. Prefer the
    /// environment variable or --encryption-key-file (never printed)
    #[arg(
        long,
        env = "USERS_ENCRYPTION_KEY",
        value_name = "KEYS",
        hide_env_values = true,
        value_parser = secret_value
    )]
    pub encryption_key: Option<SecretString>,

    /// A file holding those keys, one a line (instead of --encryption-key)
    #[arg(
        long,
        env = "USERS_ENCRYPTION_KEY_FILE",
        value_name = "FILE",
        conflicts_with = "encryption_key"
    )]
    pub encryption_key_file: Option<PathBuf>,
}

impl SealingConfig {
    /// The keys, as read from the option or the file.
    pub fn keys(&self) -> Result<SealingKeys, String> {
        match (&self.encryption_key, &self.encryption_key_file) {
            (_, Some(path)) => {
                // Wiped when dropped, as the key is.
                let text = std::fs::read_to_string(path)
                    .map(zeroize::Zeroizing::new)
                    .map_err(|e| {
                        format!(
                            "cannot read the encryption key file {}: {e}",
                            path.display()
                        )
                    })?;
                SealingKeys::parse(&text)
            }
            (Some(keys), None) => SealingKeys::parse(keys.expose_secret()),
            (None, None) => Ok(SealingKeys::default()),
        }
        .map_err(|e| format!("--encryption-key: {e}"))
    }
}

/// The hosted pages under /ui/.
#[derive(Debug, Clone, Args)]
pub struct UiConfig {
    /// The name shown at the top of the hosted pages (/ui/) and in their titles, and
    /// beside the account in authenticator apps
    #[arg(
        long,
        env = "USERS_UI_TITLE",
        value_name = "TEXT",
        default_value = DEFAULT_UI_TITLE
    )]
    pub ui_title: String,

    /// A CSS file the hosted pages load after their own stylesheet, to brand them
    #[arg(long, env = "USERS_UI_STYLESHEET", value_name = "FILE")]
    pub ui_stylesheet: Option<PathBuf>,

    /// A logo (PNG, SVG, JPEG or WebP file) shown at the top of the hosted pages
    /// instead of the title
    #[arg(long, env = "USERS_UI_LOGO", value_name = "FILE")]
    pub ui_logo: Option<PathBuf>,

    /// With tenants, a directory with each tenant's own look in a folder named after it:
    /// `title` (a line of text), `brand.css` and `logo.png` (or .svg, .jpg, .webp), each
    /// taking the place of --ui-title, --ui-stylesheet or --ui-logo for that tenant's
    /// pages and console
    #[arg(long, env = "USERS_UI_TENANT_DIR", value_name = "DIR")]
    pub ui_tenant_dir: Option<PathBuf>,
}

/// A value that is a secret: kept out of `Debug` output.
fn secret_value(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

/// Webhooks: where events are announced, and the secret that signs them.
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Endpoints (comma-separated URLs) that receive the events (user.created,
    /// user.updated, user.deleted, user.verified, session.created, session.ended,
    /// password.changed), signed as Standard Webhooks says
    #[arg(
        long = "webhook-urls",
        env = "USERS_WEBHOOK_URLS",
        value_name = "URLS",
        value_delimiter = ','
    )]
    pub webhook_urls: Vec<String>,

    /// The secret that signs them: `whsec_` and base64, as Standard Webhooks writes it
    /// (never printed)
    #[arg(
        long,
        env = "USERS_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        value_parser = secret_value
    )]
    pub webhook_secret: Option<SecretString>,

    /// A file whose first line is the webhook secret (instead of --webhook-secret)
    #[arg(long, env = "USERS_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// With tenants, a file of tenants' own webhooks, one line each: `TENANT SECRET
    /// URL[,URL...]`; a tenant listed there sends its events there alone, signed with
    /// its own secret, instead of to --webhook-urls
    #[arg(long, env = "USERS_WEBHOOK_TENANTS_FILE", value_name = "FILE")]
    pub webhook_tenants_file: Option<PathBuf>,

    /// Attempts at a delivery before it is given up
    #[arg(
        long,
        env = "USERS_WEBHOOK_MAX_ATTEMPTS",
        value_name = "N",
        default_value_t = DEFAULT_MAIL_MAX_ATTEMPTS,
        value_parser = clap::value_parser!(u32).range(1..=100)
    )]
    pub webhook_max_attempts: u32,

    /// Seconds before a failed delivery is tried again; each further retry waits twice
    /// as long, up to an hour
    #[arg(
        long,
        env = "USERS_WEBHOOK_RETRY_DELAY",
        value_name = "SECONDS",
        default_value_t = DEFAULT_MAIL_RETRY_DELAY,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub webhook_retry_delay: u64,
}

/// E-mail delivery and the links the e-mails carry.
#[derive(Debug, Clone, Args)]
pub struct MailConfig {
    /// SMTP server for the service's e-mails: smtp://USER:PASS@HOST:587 (STARTTLS
    /// required), smtps://USER:PASS@HOST:465 (TLS), or smtp://HOST:25?tls=none (plain,
    /// for a local relay). Unset: e-mails are not sent but written to the log
    #[arg(
        long,
        env = "USERS_SMTP_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub smtp_url: Option<String>,

    /// Sender address of the service's e-mails
    #[arg(long, env = "USERS_MAIL_FROM", value_name = "ADDRESS", default_value = DEFAULT_MAIL_FROM)]
    pub mail_from: String,

    /// The service's public base address, which verification links point at
    /// (default: http://<listen address>)
    #[arg(long, env = "USERS_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Origins (https://app.example.com) a verification link may redirect to,
    /// comma-separated (default: any http or https address)
    #[arg(
        long,
        env = "USERS_REDIRECT_ALLOWLIST",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub redirect_allowlist: Vec<String>,

    /// Seconds a magic link stays valid
    #[arg(
        long,
        env = "USERS_MAGIC_LINK_TTL",
        value_name = "SECONDS",
        default_value_t = DEFAULT_MAGIC_LINK_TTL,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub magic_link_ttl: u64,

    /// Attempts at sending an e-mail before it is given up (and its link or code
    /// withdrawn)
    #[arg(
        long,
        env = "USERS_MAIL_MAX_ATTEMPTS",
        value_name = "N",
        default_value_t = DEFAULT_MAIL_MAX_ATTEMPTS,
        value_parser = clap::value_parser!(u32).range(1..=100)
    )]
    pub mail_max_attempts: u32,

    /// Seconds before an e-mail that could not be sent is tried again; each further
    /// retry waits twice as long, up to an hour
    #[arg(
        long,
        env = "USERS_MAIL_RETRY_DELAY",
        value_name = "SECONDS",
        default_value_t = DEFAULT_MAIL_RETRY_DELAY,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub mail_retry_delay: u64,
}

/// Password policy and hashing cost.
#[derive(Debug, Clone, Args)]
pub struct PasswordConfig {
    /// Shortest accepted new password, in characters (12 or more is recommended)
    #[arg(
        long,
        env = "USERS_PASSWORD_MIN_LENGTH",
        value_name = "N",
        default_value_t = DEFAULT_PASSWORD_MIN_LENGTH,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(8..=1024)
    )]
    pub password_min_length: usize,

    /// argon2id memory cost in KiB for new hashes (at least the OWASP minimum)
    #[arg(
        long = "argon2-m-kib",
        env = "USERS_ARGON2_M_KIB",
        value_name = "KIB",
        default_value_t = OWASP_MIN_M_KIB,
        value_parser = clap::value_parser!(u32).range(i64::from(OWASP_MIN_M_KIB)..=4_194_304)
    )]
    pub argon2_m_kib: u32,

    /// argon2id passes for new hashes
    #[arg(
        long = "argon2-t",
        env = "USERS_ARGON2_T",
        value_name = "N",
        default_value_t = OWASP_MIN_T,
        value_parser = clap::value_parser!(u32).range(i64::from(OWASP_MIN_T)..=100)
    )]
    pub argon2_t: u32,

    /// argon2id lanes for new hashes
    #[arg(
        long = "argon2-p",
        env = "USERS_ARGON2_P",
        value_name = "N",
        default_value_t = OWASP_MIN_P,
        value_parser = clap::value_parser!(u32).range(i64::from(OWASP_MIN_P)..=64)
    )]
    pub argon2_p: u32,

    /// How many nice values the password hashing threads run below the rest of the
    /// service (0-19, Linux): above 0, short requests (session checks, reads) get the CPU
    /// before the hashes when both want it, so a sign-in flood slows them less, and
    /// sign-ins wait longer
    #[arg(
        long = "hash-nice",
        env = "USERS_HASH_NICE",
        value_name = "N",
        default_value_t = DEFAULT_HASH_NICE,
        value_parser = clap::value_parser!(u8).range(0..=19)
    )]
    pub hash_nice: u8,

    #[command(flatten)]
    pub import_limits: HashLimitsConfig,
}

/// The most a password hash brought in from another system (by `import`, or by Create
/// with `password_hash`) may cost to check.
#[derive(Debug, Clone, Args)]
pub struct HashLimitsConfig {
    /// Highest bcrypt cost accepted in an imported hash
    #[arg(long, env = "USERS_IMPORT_MAX_BCRYPT_COST", value_name = "COST", default_value_t = CostLimits::default().bcrypt_cost,
        value_parser = clap::value_parser!(u32).range(4..=31))]
    pub import_max_bcrypt_cost: u32,

    /// Highest scrypt N accepted in an imported hash, as a power of two (N*r*p may be
    /// at most 8 times 2^this)
    #[arg(long, env = "USERS_IMPORT_MAX_SCRYPT_LOG_N", value_name = "LOG2", default_value_t = CostLimits::default().scrypt_log_n,
        value_parser = clap::value_parser!(u8).range(1..=24))]
    pub import_max_scrypt_log_n: u8,

    /// Most PBKDF2 iterations accepted in an imported hash
    #[arg(long, env = "USERS_IMPORT_MAX_PBKDF2_ITERATIONS", value_name = "N", default_value_t = CostLimits::default().pbkdf2_iterations,
        value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub import_max_pbkdf2_iterations: u32,

    /// Most argon2 memory accepted in an imported hash, in KiB
    #[arg(long = "import-max-argon2-m-kib", env = "USERS_IMPORT_MAX_ARGON2_M_KIB", value_name = "KIB", default_value_t = CostLimits::default().argon2_m_kib,
        value_parser = clap::value_parser!(u32).range(8..=4_194_304))]
    pub import_max_argon2_m_kib: u32,

    /// Most argon2 passes accepted in an imported hash
    #[arg(long = "import-max-argon2-t", env = "USERS_IMPORT_MAX_ARGON2_T", value_name = "N", default_value_t = CostLimits::default().argon2_t,
        value_parser = clap::value_parser!(u32).range(1..=100))]
    pub import_max_argon2_t: u32,
}

impl Default for HashLimitsConfig {
    fn default() -> Self {
        let limits = CostLimits::default();
        Self {
            import_max_bcrypt_cost: limits.bcrypt_cost,
            import_max_scrypt_log_n: limits.scrypt_log_n,
            import_max_pbkdf2_iterations: limits.pbkdf2_iterations,
            import_max_argon2_m_kib: limits.argon2_m_kib,
            import_max_argon2_t: limits.argon2_t,
        }
    }
}

impl HashLimitsConfig {
    pub fn limits(&self) -> CostLimits {
        CostLimits {
            bcrypt_cost: self.import_max_bcrypt_cost,
            scrypt_log_n: self.import_max_scrypt_log_n,
            pbkdf2_iterations: self.import_max_pbkdf2_iterations,
            argon2_m_kib: self.import_max_argon2_m_kib,
            argon2_t: self.import_max_argon2_t,
        }
    }
}

/// A Firebase project's password hash parameters (the console's Authentication, Users,
/// "Password hash parameters"), for `import --from firebase`.
#[derive(Debug, Clone, Args)]
pub struct FirebaseConfig {
    /// The project's base64_signer_key (a file holding it: --firebase-signer-key-file)
    #[arg(long, env = "USERS_FIREBASE_SIGNER_KEY", value_name = "BASE64", hide_env_values = true, value_parser = secret_value)]
    pub firebase_signer_key: Option<SecretString>,

    /// A file whose first line is the project's base64_signer_key
    #[arg(long, value_name = "PATH", conflicts_with = "firebase_signer_key")]
    pub firebase_signer_key_file: Option<PathBuf>,

    /// The project's base64_salt_separator
    #[arg(long, value_name = "BASE64", default_value = "Bw==")]
    pub firebase_salt_separator: String,

    /// The project's rounds
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub firebase_rounds: u32,

    /// The project's mem_cost
    #[arg(long, value_name = "N", default_value_t = 14, value_parser = clap::value_parser!(u8).range(1..=24))]
    pub firebase_mem_cost: u8,
}

impl FirebaseConfig {
    /// The project's parameters, when a signer key is given.
    pub fn project(&self) -> Result<Option<FirebaseProject>, String> {
        let key = match (&self.firebase_signer_key, &self.firebase_signer_key_file) {
            (Some(key), _) => key.expose_secret().trim().to_string(),
            (None, Some(path)) => first_line(path, "the Firebase signer key file")?,
            (None, None) => return Ok(None),
        };
        Ok(Some(FirebaseProject {
            signer_key: key,
            salt_separator: self.firebase_salt_separator.clone(),
            rounds: self.firebase_rounds,
            mem_cost: self.firebase_mem_cost,
        }))
    }
}

/// The first line of a file holding a secret (a mounted secret, say).
/// Webhook endpoints as given (blanks dropped), each an http(s) URL.
pub fn webhook_urls(given: &[String]) -> Result<Vec<String>, String> {
    let urls: Vec<String> = given
        .iter()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    for u in &urls {
        match url::Url::parse(u) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
            _ => {
                return Err(format!(
                    "invalid webhook URL {u:?}: expected http(s)://host/path"
                ))
            }
        }
    }
    Ok(urls)
}

fn first_line(path: &std::path::Path, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

fn parse_net(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{value:?} is neither an IP address nor a CIDR network"))
}

/// Settings of the database connection.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Database to use: sqlite://PATH (created when missing, readable by its owner only)
    /// or postgres://USER:PASSWORD@HOST/DB (a password is never printed)
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub url: DatabaseUrl,

    /// Most database connections the pool opens (on SQLite: reading connections, beside
    /// one writing connection; on PostgreSQL, as many again for the point reads)
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

    /// On SQLite: MiB of point reads' answers (sessions, users, searches) kept in
    /// memory while the database is unchanged; 0 turns the cache off
    #[arg(
        long = "db-read-cache-mib",
        env = "USERS_DB_READ_CACHE_MIB",
        value_name = "MIB",
        default_value_t = DEFAULT_DB_READ_CACHE_MIB,
        value_parser = clap::value_parser!(u32).range(0..=4096)
    )]
    pub read_cache_mib: u32,

    /// Do not migrate on start; refuse to start unless the schema is exactly this
    /// binary's (for deployments that run `users-service migrate` separately)
    #[arg(
        long,
        env = "USERS_NO_MIGRATE",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_migrate: bool,

    /// With tenancy: the tenant whose pool the command works on (on SQLite the file
    /// beside the database named after it, on PostgreSQL its schema); not for `serve`,
    /// which takes --tenancy and --tenants
    #[arg(long, env = "USERS_TENANT", value_name = "NAME")]
    pub tenant: Option<TenantName>,
}

impl DatabaseConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: DatabaseUrl) -> Self {
        Self {
            url,
            max_connections: DEFAULT_DB_MAX_CONNECTIONS,
            acquire_timeout: DEFAULT_DB_ACQUIRE_TIMEOUT,
            read_cache_mib: DEFAULT_DB_READ_CACHE_MIB,
            no_migrate: false,
            tenant: None,
        }
    }

    /// The same settings, on `tenant`'s pool.
    pub fn for_tenant(&self, tenant: Option<&TenantName>) -> Self {
        Self {
            tenant: tenant.cloned(),
            ..self.clone()
        }
    }

    pub fn pool(&self) -> PoolConfig {
        PoolConfig {
            max_connections: self.max_connections,
            acquire_timeout: Duration::from_secs(self.acquire_timeout),
            read_cache_bytes: usize::try_from(self.read_cache_mib).unwrap_or(0) << 20,
            schema: self.tenant.as_ref().map(tenant_schema),
        }
    }
}

impl ServeConfig {
    /// Defaults for everything but the database, listening on an ephemeral loopback
    /// port: what an embedding program or a test starts from.
    pub fn new(database: DatabaseUrl) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: None,
            database: DatabaseConfig::new(database),
            db_wait: DEFAULT_DB_WAIT,
            audit_retention_days: DEFAULT_AUDIT_RETENTION_DAYS,
            session_ttl: DEFAULT_SESSION_TTL,
            session_idle_timeout: 0,
            cors_origins: Vec::new(),
            access: AccessConfig {
                api_key: None,
                api_key_file: None,
                public_methods: DEFAULT_PUBLIC_METHODS
                    .split(',')
                    .map(str::to_owned)
                    .collect(),
                open_signup: true,
                allow_unauthenticated: false,
                trusted_proxies: Vec::new(),
                allowed_hosts: Vec::new(),
            },
            limits: LimitsConfig {
                login_max_failures: DEFAULT_LOGIN_MAX_FAILURES,
                login_max_failures_per_ip: DEFAULT_LOGIN_MAX_FAILURES,
                login_window: DEFAULT_LOGIN_WINDOW,
                login_lockout: DEFAULT_LOGIN_LOCKOUT,
                create_per_hour: DEFAULT_CREATE_PER_HOUR,
                mails_per_hour: DEFAULT_MAILS_PER_HOUR,
                passkey_sign_ins_per_hour: DEFAULT_PASSKEY_SIGN_INS_PER_HOUR,
            },
            mail: MailConfig {
                smtp_url: None,
                mail_from: DEFAULT_MAIL_FROM.to_string(),
                public_url: None,
                redirect_allowlist: Vec::new(),
                magic_link_ttl: DEFAULT_MAGIC_LINK_TTL,
                mail_max_attempts: DEFAULT_MAIL_MAX_ATTEMPTS,
                mail_retry_delay: DEFAULT_MAIL_RETRY_DELAY,
            },
            webhooks: WebhookConfig {
                webhook_urls: Vec::new(),
                webhook_secret: None,
                webhook_secret_file: None,
                webhook_tenants_file: None,
                webhook_max_attempts: DEFAULT_MAIL_MAX_ATTEMPTS,
                webhook_retry_delay: DEFAULT_MAIL_RETRY_DELAY,
            },
            ui: UiConfig {
                ui_title: DEFAULT_UI_TITLE.to_string(),
                ui_stylesheet: None,
                ui_logo: None,
                ui_tenant_dir: None,
            },
            passwords: PasswordConfig {
                password_min_length: DEFAULT_PASSWORD_MIN_LENGTH,
                argon2_m_kib: OWASP_MIN_M_KIB,
                argon2_t: OWASP_MIN_T,
                argon2_p: OWASP_MIN_P,
                hash_nice: DEFAULT_HASH_NICE,
                import_limits: HashLimitsConfig::default(),
            },
            tenancy: TenancyConfig::default(),
            sealing: SealingConfig::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: None,
            new_connection_timeout: DEFAULT_NEW_CONNECTION_TIMEOUT,
            keep_alive_timeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
        }
    }

    /// The most connections one client address may hold: as configured, or a quarter
    /// of the total.
    pub fn max_connections_per_ip(&self) -> usize {
        match self.max_connections_per_ip {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => (self.max_connections / 4).max(1),
        }
    }

    pub fn hash_params(&self) -> HashParams {
        HashParams {
            m_kib: self.passwords.argon2_m_kib,
            t: self.passwords.argon2_t,
            p: self.passwords.argon2_p,
        }
    }

    /// What e-mailed links are built from. `listen` is the address actually bound (the
    /// configured port may be 0).
    fn links(&self) -> Result<LinkSettings, String> {
        let public_url = match &self.mail.public_url {
            Some(url) => {
                let parsed = url::Url::parse(url.trim())
                    .map_err(|e| format!("USERS_PUBLIC_URL {url:?} is not a URL: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
                    return Err(format!(
                        "USERS_PUBLIC_URL {url:?} must be an http or https address without a query"
                    ));
                }
                parsed.as_str().trim_end_matches('/').to_string()
            }
            None => format!("http://{}", self.listen),
        };
        let mut redirect_allowlist = Vec::new();
        for origin in self
            .mail
            .redirect_allowlist
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
        {
            let parsed = url::Url::parse(origin)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.path() == "/")
                .ok_or_else(|| {
                    format!("USERS_REDIRECT_ALLOWLIST: {origin:?} is not an origin such as https://app.example.com")
                })?;
            redirect_allowlist.push(parsed.origin().ascii_serialization());
        }
        Ok(LinkSettings {
            public_url,
            redirect_allowlist,
            magic_link_ttl: i64::try_from(self.mail.magic_link_ttl).unwrap_or(i64::MAX),
            tenant: None,
        })
    }

    /// How the e-mail sender retries.
    pub fn outbox_config(&self) -> OutboxConfig {
        OutboxConfig {
            max_attempts: self.mail.mail_max_attempts,
            retry_delay: i64::try_from(self.mail.mail_retry_delay).unwrap_or(i64::MAX),
        }
    }

    /// The webhook endpoints and their sender, when any endpoint is configured.
    pub fn webhooks(&self) -> Result<Option<(Vec<String>, WebhookSender, OutboxConfig)>, String> {
        let w = &self.webhooks;
        let urls = webhook_urls(&w.webhook_urls)?;
        if urls.is_empty() {
            return Ok(None);
        }
        let secret = match (&w.webhook_secret, &w.webhook_secret_file) {
            (_, Some(path)) => first_line(path, "the webhook secret file")?,
            (Some(secret), None) => secret.expose_secret().to_owned(),
            (None, None) => {
                return Err(
                    "USERS_WEBHOOK_URLS needs a secret to sign with: USERS_WEBHOOK_SECRET or --webhook-secret-file"
                        .into(),
                )
            }
        };
        let sender = WebhookSender::new(&secret).map_err(|e| e.to_string())?;
        Ok(Some((urls, sender, self.webhook_outbox())))
    }

    /// How webhook deliveries are retried.
    pub fn webhook_outbox(&self) -> OutboxConfig {
        OutboxConfig {
            max_attempts: self.webhooks.webhook_max_attempts,
            retry_delay: i64::try_from(self.webhooks.webhook_retry_delay).unwrap_or(i64::MAX),
        }
    }

    /// The mailer the settings describe.
    pub fn mailer(&self) -> Result<Mailer, String> {
        let url = self
            .mail
            .smtp_url
            .as_ref()
            .map(|u| SecretString::from(u.clone()));
        Mailer::new(url.as_ref(), &self.mail.mail_from).map_err(|e| e.to_string())
    }

    /// The core's settings.
    pub fn settings(&self) -> Result<Settings, String> {
        let limits = &self.limits;
        Ok(Settings {
            session_ttl: self.session_ttl,
            session_idle_timeout: self.session_idle_timeout,
            totp_issuer: self.ui.ui_title.clone(),
            passkeys: crate::core::users::PasskeySettings {
                name: self.ui.ui_title.clone(),
                origins: self
                    .cors_origins
                    .iter()
                    .map(|o| o.trim().to_string())
                    .filter(|o| !o.is_empty() && o != "*")
                    .collect(),
            },
            password_policy: PasswordPolicy::new(self.passwords.password_min_length)?,
            limits: LimitConfig {
                login_max_failures: limits.login_max_failures,
                login_max_failures_per_ip: limits.login_max_failures_per_ip,
                login_window: i64::try_from(limits.login_window).unwrap_or(i64::MAX),
                login_lockout: i64::try_from(limits.login_lockout).unwrap_or(i64::MAX),
                create_per_hour: limits.create_per_hour,
                mails_per_hour: limits.mails_per_hour,
                passkey_sign_ins_per_hour: limits.passkey_sign_ins_per_hour,
            },
            links: self.links()?,
            audit_retention_days: self.audit_retention_days,
            hash_limits: self.passwords.import_limits.limits(),
            sealing: self.sealing.keys()?,
        })
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

    /// `ServeConfig::new` (what embedding programs and tests start from) and the
    /// command line without arguments give the same settings, but for the listen address
    /// (an ephemeral port) and the database.
    #[test]
    fn the_embedded_defaults_are_the_command_lines() {
        let configured = std::env::vars().any(|(k, _)| {
            (k.starts_with("USERS_")
                && !k.starts_with("USERS_REQUIRE_")
                && k != "USERS_TEST_LOG_DIR")
                || k == "DATABASE_URL"
        });
        if configured {
            eprintln!("SKIPPED the_embedded_defaults_are_the_command_lines: USERS_* or DATABASE_URL is set");
            return;
        }
        let mut parsed = Cli::try_parse_from(["users-service"]).unwrap().serve;
        let embedded = ServeConfig::new(parsed.database.url.clone());
        parsed.listen = embedded.listen;
        assert_eq!(format!("{parsed:?}"), format!("{embedded:?}"));
    }

    /// docs/configuration.md lists every setting of the command line, with its
    /// environment variable and default, and nothing else.
    #[test]
    fn the_configuration_reference_matches_the_command_line() {
        let doc = include_str!("../docs/configuration.md");
        // (flag, variable, default) of each row: | `--flag VALUE` | `VAR` | default | ... |
        let rows: Vec<(String, String, String)> = doc
            .lines()
            .filter(|l| l.starts_with("| `--"))
            .map(|l| {
                let cells: Vec<&str> = l.split(" | ").collect();
                let flag = cells[0]
                    .trim_start_matches("| `")
                    .split([' ', '`'])
                    .next()
                    .unwrap_or("");
                (
                    flag.to_string(),
                    cells[1].trim_matches('`').to_string(),
                    cells[2].to_string(),
                )
            })
            .collect();
        let command = Cli::command();
        let mut documented = Vec::new();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "version"].contains(&long) {
                continue;
            }
            let flag = format!("--{long}");
            let row = rows
                .iter()
                .find(|(f, _, _)| *f == flag)
                .unwrap_or_else(|| panic!("{flag} is missing from docs/configuration.md"));
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or("");
            assert_eq!(row.1, env, "{flag}'s variable");
            let switch = matches!(arg.get_action(), ArgAction::SetTrue);
            for default in arg.get_default_values() {
                let default = default.to_str().unwrap_or("");
                if switch {
                    assert!(row.2.contains("off"), "{flag}: {}", row.2);
                } else {
                    assert!(
                        row.2.contains(&format!("`{default}`")),
                        "{flag}'s default is {default}, the reference says {}",
                        row.2
                    );
                }
            }
            documented.push(flag);
        }
        for (flag, _, _) in &rows {
            assert!(
                documented.contains(flag),
                "{flag} is documented but not a setting"
            );
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
                from,
                limits,
                ..
            }) => {
                assert!(skip_existing);
                assert_eq!(from, Source::UsersService);
                assert_eq!(limits.limits(), CostLimits::default());
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
