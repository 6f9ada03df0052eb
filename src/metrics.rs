//! The service's metrics, in the Prometheus text format (`GET /metrics`).
//!
//! One [`Metrics`] per running service (no process-wide registry), so that two servers
//! in one process, as in the tests, count apart. Every name starts with `users_` and
//! follows Prometheus' conventions: counters end in `_total`, durations are in seconds
//! (`_seconds`). docs/operations.md lists them.

use std::fmt::Write as _;
use std::sync::{Arc, Weak};

use crate::domain::TenantName;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Which routes a request went to.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values, as they are written
pub enum RouteFamily {
    /// `/users/Users/<Method>`
    micro,
    /// `/v1/user/<Method>`
    m3o,
    /// the hosted pages, micro.js and the verification link
    ui,
    /// `/health`, `/health/ready`, `/health/live`
    health,
    /// `/metrics`
    metrics,
    /// anything else (`/openapi.yaml`, unknown paths)
    other,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub family: RouteFamily,
    /// The RPC method (`Login`), `unknown` for a name the service does not serve, or the
    /// HTTP verb for the other routes: never a raw path, so the series stay few.
    pub method: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub family: RouteFamily,
    pub method: &'static str,
}

/// Which limit refused a request (429) or locked a key out.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LimitName {
    /// Failed password and code checks, per account.
    login_account,
    /// Failed password and code checks, per client address.
    login_address,
    /// Sign-ups per address and hour.
    signup,
    /// E-mails per address and hour.
    mail,
    /// Passkey sign-ins started per address and hour.
    passkey_sign_in,
}

impl LimitName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::login_account => "login_account",
            Self::login_address => "login_address",
            Self::signup => "signup",
            Self::mail => "mail",
            Self::passkey_sign_in => "passkey_sign_in",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: LimitName,
}

/// The ways a session is opened (`SignInMethod` in the domain).
pub const SESSION_METHODS: [&str; 3] = ["password", "magic_link", "passkey"];

/// How a session was opened.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub method: &'static str,
}

/// Why sessions ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EndCause {
    /// Logout, or RevokeSession of one session.
    logout,
    /// LogoutAll.
    logout_all,
    /// Past their lifetime or idle timeout, swept.
    expired,
    /// A new password (UpdatePassword, ResetPassword).
    password_changed,
    /// A second factor turned on or reset.
    second_factor,
    /// The account was deleted.
    user_deleted,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub cause: EndCause,
}

/// How a reload of the tenants ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadOutcome {
    /// The tenants are served as the files say.
    done,
    /// The files could not be used: nothing changed.
    refused,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub outcome: ReloadOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

/// The counters, gauges and histograms the layers update, and the registry that
/// writes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub limited: Family<LimitLabels, Counter>,
    pub lockouts: Family<LimitLabels, Counter>,
    pub sessions_created: Family<SessionLabels, Counter>,
    pub sessions_ended: Family<EndLabels, Counter>,
    pub mail: MailMetrics,
    pub webhooks: MailMetrics,
    pub database: DatabaseMetrics,
    /// With tenants, the process's: reloads of the tenants, by outcome.
    pub tenant_reloads: Family<ReloadLabels, Counter>,
}

/// The password hashing pool.
#[derive(Debug, Clone)]
pub struct Argon2Metrics {
    /// Computations waiting for a free thread.
    pub waiting: Gauge,
    /// Computations running.
    pub running: Gauge,
    /// How long computations waited for a thread.
    pub wait: Histogram,
}

impl Default for Argon2Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Argon2Metrics {
    pub fn new() -> Self {
        Self {
            waiting: Gauge::default(),
            running: Gauge::default(),
            wait: seconds_histogram(),
        }
    }
}

/// The e-mail outbox's sender.
#[derive(Debug, Clone, Default)]
pub struct MailMetrics {
    /// Messages waiting to be sent, counted every few seconds.
    pub queued: Gauge,
    pub sent: Counter,
    /// Attempts that failed and will be retried.
    pub failed: Counter,
    /// Messages given up after their last attempt.
    pub dead: Counter,
}

impl MailMetrics {
    /// Registers an outbox channel's metrics as `users_<name>_queued`, `_sent_total`,
    /// `_failed_total` and `_dead_total`.
    fn register(registry: &mut Registry, name: &str, what: &str, to: &str) -> Self {
        let metrics = Self::default();
        registry.register(
            format!("{name}_queued"),
            format!("{what} waiting in the outbox to be sent"),
            metrics.queued.clone(),
        );
        registry.register(
            format!("{name}_sent"),
            format!("{what} accepted by {to}"),
            metrics.sent.clone(),
        );
        registry.register(
            format!("{name}_failed"),
            format!("{what}: attempts that failed and will be retried"),
            metrics.failed.clone(),
        );
        registry.register(
            format!("{name}_dead"),
            format!("{what} given up after their last attempt"),
            metrics.dead.clone(),
        );
        metrics
    }
}

/// The database's connections, read from the pool at each scrape.
#[derive(Debug, Clone)]
pub struct DatabaseMetrics {
    pub acquire_wait: Histogram,
}

/// What the pool reports when scraped: connections in use and idle.
pub trait PoolGauge: Send + Sync + std::fmt::Debug + 'static {
    /// (in use, idle)
    fn connections(&self) -> (u32, u32);

    /// On SQLite: how its writes were made durable, batched and checkpointed, and how
    /// many point reads its read cache answered.
    fn sqlite_counts(&self) -> Option<SqliteCounts> {
        None
    }
}

/// The SQLite store's counters, since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqliteCounts {
    /// Group fsyncs of the WAL made.
    pub syncs: u64,
    /// Writes those fsyncs made durable.
    pub synced: u64,
    /// Transactions of batched writes committed.
    pub batches: u64,
    /// Writes those transactions held.
    pub batched: u64,
    /// Checkpoints made beside the writer.
    pub checkpoints: u64,
    /// Of them, the ones that finished under the writer's lock so that the WAL starts over.
    pub wal_resets: u64,
    /// Point reads (session checks, users by id, name or address, searches) answered
    /// from the read cache.
    pub cache_hits: u64,
    /// Point reads that read the database.
    pub cache_misses: u64,
}

/// Histogram buckets for durations from 100 µs to about 13 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Which of the service's metrics one [`Metrics`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// All of them: a service without tenants.
    Whole,
    /// The process's own (hashing threads, version) and requests no tenant was found
    /// for: a service with tenants.
    Process,
    /// A tenant's (its requests, limits, sessions, outboxes and database), each series
    /// labelled `tenant`.
    Tenant,
}

impl Metrics {
    /// A registry with every metric, the pool's gauges read from `pool` at each scrape
    /// and the hashing pool's from `argon2` (which the hasher updates).
    pub fn new(pool: Weak<dyn PoolGauge>, argon2: &Argon2Metrics) -> Self {
        Self::build(
            Registry::with_prefix("users"),
            Some(pool),
            Some(argon2),
            Part::Whole,
        )
    }

    /// With tenants: the process's own metrics (the hashing pool's among them), beside
    /// the tenants' ([`Scrape`]).
    pub fn process(argon2: &Argon2Metrics) -> Self {
        Self::build(
            Registry::with_prefix("users"),
            None,
            Some(argon2),
            Part::Process,
        )
    }

    /// With tenants: `tenant`'s metrics, every series labelled `tenant="<name>"`.
    pub fn for_tenant(pool: Weak<dyn PoolGauge>, tenant: &TenantName) -> Self {
        let labels = std::iter::once((
            std::borrow::Cow::Borrowed("tenant"),
            std::borrow::Cow::Owned(tenant.to_string()),
        ));
        Self::build(
            Registry::with_prefix_and_labels("users", labels),
            Some(pool),
            None,
            Part::Tenant,
        )
    }

    fn build(
        registry: Registry,
        pool: Option<Weak<dyn PoolGauge>>,
        argon2: Option<&Argon2Metrics>,
        part: Part,
    ) -> Self {
        let mut whole = registry;
        // What this part does not hold goes to a registry that is never written.
        let mut unused = Registry::default();
        let (process, tenant) = match part {
            Part::Whole => (true, true),
            Part::Process => (true, false),
            Part::Tenant => (false, true),
        };
        let mut registry = &mut whole;
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route family, method and status",
            requests.clone(),
        );
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route family and method",
            request_duration.clone(),
        );
        registry = if process { &mut whole } else { &mut unused };
        if let Some(argon2) = argon2 {
            registry.register(
                "argon2_waiting",
                "Password hashes and checks waiting for a hashing thread",
                argon2.waiting.clone(),
            );
            registry.register(
                "argon2_running",
                "Password hashes and checks running",
                argon2.running.clone(),
            );
            registry.register(
                "argon2_wait_seconds",
                "How long password hashes and checks waited for a hashing thread",
                argon2.wait.clone(),
            );
        }
        registry = if tenant { &mut whole } else { &mut unused };
        let database = DatabaseMetrics {
            acquire_wait: seconds_histogram(),
        };
        registry.register(
            "db_acquire_wait_seconds",
            "How long write transactions waited for a database connection",
            database.acquire_wait.clone(),
        );
        if let Some(pool) = pool {
            registry.register_collector(Box::new(PoolCollector(pool)));
        }
        let limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429, by the limit that refused them",
            limited.clone(),
        );
        let lockouts = Family::<LimitLabels, Counter>::default();
        registry.register(
            "lockouts",
            "Keys locked out after too many failed password or code checks",
            lockouts.clone(),
        );
        let sessions_created = Family::<SessionLabels, Counter>::default();
        registry.register(
            "sessions_created",
            "Sessions opened, by sign-in method",
            sessions_created.clone(),
        );
        let sessions_ended = Family::<EndLabels, Counter>::default();
        registry.register(
            "sessions_ended",
            "Sessions ended, by cause",
            sessions_ended.clone(),
        );
        let mail = MailMetrics::register(registry, "mail", "E-mails", "the SMTP server");
        let webhooks = MailMetrics::register(
            registry,
            "webhooks",
            "Webhook deliveries",
            "their endpoints",
        );
        // Every label value the service can report is there from the start, at 0, so
        // that rates and alerts work from the first scrape.
        for limit in [
            LimitName::login_account,
            LimitName::login_address,
            LimitName::signup,
            LimitName::mail,
            LimitName::passkey_sign_in,
        ] {
            drop(limited.get_or_create(&LimitLabels { limit }));
            if matches!(limit, LimitName::login_account | LimitName::login_address) {
                drop(lockouts.get_or_create(&LimitLabels { limit }));
            }
        }
        for method in SESSION_METHODS {
            drop(sessions_created.get_or_create(&SessionLabels { method }));
        }
        for cause in [
            EndCause::logout,
            EndCause::logout_all,
            EndCause::expired,
            EndCause::password_changed,
            EndCause::second_factor,
            EndCause::user_deleted,
        ] {
            drop(sessions_ended.get_or_create(&EndLabels { cause }));
        }
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry = if process { &mut whole } else { &mut unused };
        registry.register("build_info", "The running version (always 1)", build);
        // Only a service with tenants reloads them.
        let tenant_reloads = Family::<ReloadLabels, Counter>::default();
        if part == Part::Process {
            for outcome in [ReloadOutcome::done, ReloadOutcome::refused] {
                drop(tenant_reloads.get_or_create(&ReloadLabels { outcome }));
            }
            registry.register(
                "tenant_reloads",
                "Reloads of the tenants' files (SIGHUP, --tenants-watch), by outcome: \
                 done, or refused (the files could not be used, and nothing changed)",
                tenant_reloads.clone(),
            );
        }
        Self {
            registry: whole,
            requests,
            request_duration,
            limited,
            lockouts,
            sessions_created,
            sessions_ended,
            mail,
            webhooks,
            database,
            tenant_reloads,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, route: RouteLabels, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                family: route.family,
                method: route.method,
                status,
            })
            .inc();
        self.request_duration
            .get_or_create(&route)
            .observe(took.as_secs_f64());
    }

    /// Counts one reload of the tenants.
    pub fn tenants_reloaded(&self, outcome: ReloadOutcome) {
        self.tenant_reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
    }

    pub fn limited(&self, limit: LimitName) {
        self.limited.get_or_create(&LimitLabels { limit }).inc();
    }

    pub fn locked_out(&self, limit: LimitName) {
        self.lockouts.get_or_create(&LimitLabels { limit }).inc();
    }

    pub fn session_created(&self, method: &'static str) {
        self.sessions_created
            .get_or_create(&SessionLabels { method })
            .inc();
    }

    pub fn sessions_ended(&self, cause: EndCause, count: u64) {
        if count > 0 {
            self.sessions_ended
                .get_or_create(&EndLabels { cause })
                .inc_by(count);
        }
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry).is_err()
        {
            // Writing to a String cannot fail; say so rather than answer half a page.
            text.clear();
            let _ = writeln!(text, "# the metrics could not be written");
        }
        text
    }
}

/// What `GET /metrics` writes: one [`Metrics`], or with tenants the process's and every
/// tenant's, each family written once with the series of all.
#[derive(Debug)]
pub struct Scrape(std::sync::RwLock<Vec<Arc<Metrics>>>);

impl Scrape {
    pub fn new(parts: Vec<Arc<Metrics>>) -> Self {
        Self(std::sync::RwLock::new(parts))
    }

    /// From now on, `parts` (tenants were added or removed).
    pub fn set(&self, parts: Vec<Arc<Metrics>>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = parts;
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let parts = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match parts.as_slice() {
            [one] => one.render(),
            parts => merge_families(parts.iter().map(|m| m.render())),
        }
    }
}

/// Joins texts written by the encoder (`# HELP`, `# TYPE`, maybe `# UNIT`, then the
/// samples, for each family; `# EOF` last): a family found in several is written once,
/// its header from the first, its samples from all, in order.
fn merge_families(texts: impl Iterator<Item = String>) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: std::collections::HashMap<String, (String, String)> =
        std::collections::HashMap::new();
    for text in texts {
        let mut current: Option<String> = None;
        for line in text.lines() {
            if line == "# EOF" {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or("").to_string();
                let fresh = !families.contains_key(&name);
                if fresh {
                    order.push(name.clone());
                }
                let entry = families.entry(name.clone()).or_default();
                if fresh {
                    entry.0.push_str(line);
                    entry.0.push('\n');
                }
                current = Some(name);
                continue;
            }
            let Some(name) = &current else { continue };
            let Some(entry) = families.get_mut(name) else {
                continue;
            };
            let header = line.starts_with("# TYPE ") || line.starts_with("# UNIT ");
            if header {
                if !entry.0.contains(line) {
                    entry.0.push_str(line);
                    entry.0.push('\n');
                }
            } else {
                entry.1.push_str(line);
                entry.1.push('\n');
            }
        }
    }
    let mut out = String::with_capacity(32 * 1024);
    for name in order {
        if let Some((header, samples)) = families.get(&name) {
            out.push_str(header);
            out.push_str(samples);
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Reads the pool's connections at each scrape.
#[derive(Debug)]
struct PoolCollector(Weak<dyn PoolGauge>);

impl Collector for PoolCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct State {
            state: &'static str,
        }
        let (in_use, idle) = self.0.upgrade().map_or((0, 0), |pool| pool.connections());
        let family = Family::<State, Gauge>::default();
        family
            .get_or_create(&State { state: "in_use" })
            .set(i64::from(in_use));
        family
            .get_or_create(&State { state: "idle" })
            .set(i64::from(idle));
        let metric = encoder.encode_descriptor(
            "db_connections",
            "Database connections of the pool, in use and idle",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)?;
        let Some(pool) = self.0.upgrade() else {
            return Ok(());
        };
        let Some(writes) = pool.sqlite_counts() else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "db_wal_syncs",
                "Group fsyncs of the SQLite WAL, each making every write committed before it durable",
                writes.syncs,
            ),
            (
                "db_synced_writes",
                "SQLite writes made durable by the group fsyncs",
                writes.synced,
            ),
            (
                "db_write_batches",
                "Transactions of batched SQLite writes (Logouts), each holding the ones that arrived together",
                writes.batches,
            ),
            (
                "db_batched_writes",
                "SQLite writes committed in batches",
                writes.batched,
            ),
            (
                "db_wal_checkpoints",
                "Checkpoints of the SQLite WAL made beside the writer",
                writes.checkpoints,
            ),
            (
                "db_wal_resets",
                "Checkpoints finished under the SQLite writer's lock so that the WAL starts over",
                writes.wal_resets,
            ),
            (
                "db_read_cache_hits",
                "SQLite point reads answered from memory, the database unchanged since they were read",
                writes.cache_hits,
            ),
            (
                "db_read_cache_misses",
                "SQLite point reads that read the database",
                writes.cache_misses,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric =
                encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoPool;

    impl PoolGauge for NoPool {
        fn connections(&self) -> (u32, u32) {
            (1, 2)
        }
    }

    /// With tenants, each family is written once, with every tenant's series labelled
    /// and the process's own unlabelled.
    #[test]
    fn a_scrape_of_tenants_writes_each_family_once() {
        let pool: Arc<dyn PoolGauge> = Arc::new(NoPool);
        let tenant = |name: &str| {
            Arc::new(Metrics::for_tenant(
                Arc::downgrade(&pool),
                &name.parse().unwrap(),
            ))
        };
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        acme.session_created("password");
        globex.sessions_ended(EndCause::logout, 2);
        let route = RouteLabels {
            family: RouteFamily::micro,
            method: "Login",
        };
        let process = Arc::new(Metrics::process(&Argon2Metrics::new()));
        for metrics in [&process, &acme, &globex] {
            metrics.request(route.clone(), 200, Duration::ZERO);
        }
        let text = Scrape::new(vec![process, acme, globex]).render();
        for family in [
            "users_sessions_created_total",
            "users_db_connections",
            "users_argon2_running",
            "users_http_requests_total",
        ] {
            let types = text
                .lines()
                .filter(|l| l.starts_with(&format!("# TYPE {family} ")))
                .count();
            assert_eq!(types, 1, "{family}:\n{text}");
        }
        assert!(
            text.contains("users_sessions_created_total{tenant=\"acme\",method=\"password\"} 1\n")
        );
        assert!(text.contains("users_sessions_ended_total{tenant=\"globex\",cause=\"logout\"} 2\n"));
        assert!(text.contains("users_db_connections{tenant=\"globex\",state=\"idle\"} 2\n"));
        assert!(text.contains("users_argon2_running 0\n"), "{text}");
        assert!(!text.contains("users_argon2_running{"), "{text}");
        assert!(text.contains(
            "users_http_requests_total{family=\"micro\",method=\"Login\",status=\"200\"} 1\n"
        ));
        assert!(text.contains(
            "users_http_requests_total{tenant=\"acme\",family=\"micro\",method=\"Login\",status=\"200\"} 1\n"
        ));
        assert!(text.ends_with("\n# EOF\n") && text.matches("# EOF").count() == 1);
    }
}
