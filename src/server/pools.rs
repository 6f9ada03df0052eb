//! The user pools a running service serves: each one's store, core, outboxes and
//! background work. They are made at start and, with tenants, again at each reload,
//! which adds the tenants now listed and lets go of the ones no longer listed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::ServeConfig;
use crate::core::clock::Clock;
use crate::core::outbox::{Outbox, Transport};
use crate::core::password::PasswordHasher;
use crate::core::users::{Settings, Users};
use crate::domain::TenantName;
use crate::error::chain;
use crate::http::access::AccessPolicy;
use crate::http::tenants::TenantSelection;
use crate::http::ui::UiSettings;
use crate::http::{App, AppState, Everyone, Shared};
use crate::metrics::{Argon2Metrics, Metrics, ReloadOutcome, Scrape};
use crate::store::SqlStore;

use super::tenancy::{files_digest, TenancyPlan};
use super::{open_store, open_store_waiting, sweep, StartError};

/// What serves one user pool: the service's only one, or a tenant's.
pub(super) struct PoolParts {
    pub(super) tenant: Option<TenantName>,
    pub(super) users: Arc<Users>,
    pub(super) store: Arc<SqlStore>,
    /// The webhook sender, when endpoints are configured.
    pub(super) webhooks: Option<Arc<Outbox>>,
    pub(super) metrics: Arc<Metrics>,
}

/// A pool's background work while it is served: the sweeper and the senders.
struct PoolTasks {
    sweeper: JoinHandle<()>,
    mail: JoinHandle<()>,
    webhooks: Option<JoinHandle<()>>,
}

impl PoolParts {
    fn start(&self) -> PoolTasks {
        PoolTasks {
            sweeper: tokio::spawn(sweep(self.users.clone())),
            mail: tokio::spawn(self.users.outbox().clone().run()),
            webhooks: self
                .webhooks
                .clone()
                .map(|outbox| tokio::spawn(outbox.run())),
        }
    }
}

/// A pool being served, with its background work once the service runs.
struct Live {
    parts: PoolParts,
    tasks: Option<PoolTasks>,
}

/// Stops `pools`: their sweepers at once, their senders once they finish the message
/// they are sending (by `deadline`: one unfinished stays claimed until its lease ends,
/// then another sender sends it), then writes their sessions' uses and closes their
/// stores.
async fn stop(mut pools: Vec<Live>, deadline: tokio::time::Instant) {
    for live in &pools {
        if let Some(tasks) = &live.tasks {
            tasks.sweeper.abort();
        }
        live.parts.users.outbox().stop();
        if let Some(outbox) = &live.parts.webhooks {
            outbox.stop();
        }
    }
    for live in &mut pools {
        let Some(tasks) = &mut live.tasks else {
            continue;
        };
        if tokio::time::timeout_at(deadline, &mut tasks.mail)
            .await
            .is_err()
        {
            tracing::warn!("some e-mails were still being sent at the shutdown deadline");
        }
        if let Some(webhooks) = &mut tasks.webhooks {
            if tokio::time::timeout_at(deadline, webhooks).await.is_err() {
                tracing::warn!("some webhooks were still being delivered at the shutdown deadline");
            }
        }
    }
    for live in pools {
        live.parts.users.write_session_uses().await;
        live.parts.store.close().await;
    }
}

/// Closes pools opened but never served.
async fn discard(opened: Vec<PoolParts>) {
    let unserved = opened.into_iter().map(|parts| Live { parts, tasks: None });
    stop(unserved.collect(), tokio::time::Instant::now()).await;
}

/// Everything a pool is made with, kept for the pools a reload adds.
pub(super) struct PoolMaker {
    pub(super) config: ServeConfig,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) hasher: Arc<PasswordHasher>,
    pub(super) argon2: Argon2Metrics,
    pub(super) settings: Settings,
    /// The service's own access rules; a tenant's add its keys.
    pub(super) access: AccessPolicy,
    pub(super) ui: Arc<UiSettings>,
    /// What every pool's state shares.
    pub(super) shared: SharedParts,
}

/// The parts of [`Shared`] that every pool has alike.
pub(super) struct SharedParts {
    pub(super) trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    pub(super) request_timeout: Duration,
    pub(super) guard: Arc<crate::http::guard::Guard>,
    pub(super) scrape: Arc<Scrape>,
    pub(super) metrics_on_main: bool,
    pub(super) everyone: Arc<Everyone>,
}

impl PoolMaker {
    /// Opens the pool of `tenant` (None: the service's only one), creating and
    /// migrating its database as the configuration says. At start (`waiting` names the
    /// listener) a database that does not answer yet is waited for, as `--db-wait`
    /// says; at a reload it fails the reload at once. `first`: the service's first
    /// pool, which says once what every pool shares.
    pub(super) async fn open(
        &self,
        tenant: Option<&TenantName>,
        plan: &TenancyPlan,
        waiting: Option<&TcpListener>,
        first: bool,
    ) -> Result<PoolParts, StartError> {
        let config = &self.config;
        let mailer = config.mailer().map_err(StartError::Config)?;
        // A tenant's own webhooks, else the service's.
        let webhooks = match tenant.and_then(|t| plan.webhooks.get(t)) {
            Some((urls, sender)) => Some((urls.clone(), sender.clone(), config.webhook_outbox())),
            None => config.webhooks().map_err(StartError::Config)?,
        };
        let database = config.database.for_tenant(tenant);
        let store = Arc::new(match waiting {
            Some(listener) => {
                let wait = Duration::from_secs(config.db_wait);
                open_store_waiting(&database, listener, wait).await?
            }
            None => open_store(&database).await?,
        });
        store.prepare_to_serve().await;
        let gauge: Arc<dyn crate::metrics::PoolGauge> = store.clone();
        let metrics = Arc::new(match tenant {
            Some(tenant) => Metrics::for_tenant(Arc::downgrade(&gauge), tenant),
            None => Metrics::new(Arc::downgrade(&gauge), &self.argon2),
        });
        store.attach_metrics(metrics.clone());
        if !mailer.sends() && first {
            tracing::warn!(
                "no SMTP server is set (USERS_SMTP_URL): e-mails are written to the log, \
                 not sent"
            );
        }
        let outbox = Arc::new(
            Outbox::new(
                store.clone(),
                Transport::Mail(mailer),
                self.clock.clone(),
                config.outbox_config(),
            )
            .with_metrics(metrics.mail.clone()),
        );
        let webhooks = match webhooks {
            Some((endpoints, sender, outbox_config)) => {
                if first {
                    tracing::info!(
                        endpoints = endpoints.len(),
                        "changes are announced to webhooks"
                    );
                }
                let tenant = tenant.map(|t| t.as_str());
                store.attach_webhooks(endpoints, tenant);
                Some(Arc::new(
                    Outbox::new(
                        store.clone(),
                        Transport::Webhook(sender.for_tenant(tenant)),
                        self.clock.clone(),
                        outbox_config,
                    )
                    .with_metrics(metrics.webhooks.clone()),
                ))
            }
            None => None,
        };
        // Counted beside the start, which waits for no scan of the stored secrets.
        let (counted, sealing) = (store.clone(), self.settings.sealing.clone());
        let of = tenant.map(ToString::to_string);
        tokio::spawn(async move {
            crate::core::sealing::check_stored(counted.as_ref(), &sealing, of.as_deref()).await;
        });
        let mut settings = self.settings.clone();
        settings.links.tenant = tenant.map(ToString::to_string);
        let look = tenant.and_then(|t| plan.looks.get(t));
        if let Some(title) = look.and_then(|look| look.title.clone()) {
            settings.totp_issuer = title;
        }
        let users = Arc::new(Users::new(
            store.clone(),
            self.hasher.clone(),
            self.clock.clone(),
            settings,
            outbox,
            metrics.clone(),
        ));
        Ok(PoolParts {
            tenant: tenant.cloned(),
            users,
            store,
            webhooks,
            metrics,
        })
    }

    /// The access rules of `tenant`'s pool: the service's, with its own keys.
    pub(super) fn policy(&self, tenant: Option<&TenantName>, plan: &TenancyPlan) -> AccessPolicy {
        match tenant {
            Some(tenant) => self.access.for_tenant(tenant, &plan.keys_of(tenant)),
            None => self.access.clone(),
        }
    }

    /// What the routes of `pool` are served with: its core, its access rules and its
    /// pages' settings (a tenant's name them in their links, forms and redirects, and
    /// wear its own look where it has one).
    pub(super) fn state(&self, pool: &PoolParts, plan: &TenancyPlan) -> AppState {
        let ui = match &pool.tenant {
            Some(tenant) => {
                let mut own = self.ui.for_tenant(tenant.as_str());
                if let Some(look) = plan.looks.get(tenant) {
                    if let Some(title) = &look.title {
                        own.title.clone_from(title);
                    }
                    if let Some(css) = &look.stylesheet {
                        own.stylesheet = Some(css.clone());
                    }
                    if let Some(logo) = &look.logo {
                        own.logo = Some(logo.clone());
                    }
                }
                Arc::new(own)
            }
            None => self.ui.clone(),
        };
        let shared = &self.shared;
        AppState::new(Shared {
            users: pool.users.clone(),
            access: Arc::new(self.policy(pool.tenant.as_ref(), plan)),
            trusted_proxies: shared.trusted_proxies.clone(),
            request_timeout: shared.request_timeout,
            guard: shared.guard.clone(),
            ui,
            metrics: pool.metrics.clone(),
            scrape: shared.scrape.clone(),
            metrics_on_main: shared.metrics_on_main,
            everyone: shared.everyone.clone(),
        })
    }
}

/// The pools a service serves, shared by [`super::Server`] and its [`Reloader`].
pub(super) struct Serving {
    pub(super) maker: PoolMaker,
    pub(super) app: Arc<App>,
    /// With tenants, the metrics of the process (requests no tenant was found for,
    /// the hashing pool); None without tenants.
    pub(super) process_metrics: Option<Arc<Metrics>>,
    state: Mutex<ServingState>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

struct ServingState {
    /// In the order of the tenants' list (its first answers the routes that name no
    /// tenant).
    live: Vec<Live>,
    /// Whether the pools' background work runs (between `run` and its stop).
    started: bool,
    /// The service has stopped: a reload opens nothing.
    stopped: bool,
    /// Pools a reload let go of, by that reload's number, until the request deadline
    /// has passed for the requests under way with them (or the service stops).
    leaving: Vec<(u64, Live)>,
    /// The number of the last reload.
    reloads: u64,
    /// The digests of the tenants' webhook lines of the last plan, to tell a change.
    webhook_lines: std::collections::HashMap<TenantName, String>,
    /// What the tenants' files held when the last plan was read (`files_digest`).
    files: String,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Tenants served from now on that were not before.
    pub added: Vec<TenantName>,
    /// Tenants no longer served (their data is kept).
    pub removed: Vec<TenantName>,
}

impl Serving {
    pub(super) fn new(
        maker: PoolMaker,
        app: Arc<App>,
        process_metrics: Option<Arc<Metrics>>,
        pools: Vec<PoolParts>,
        plan: &TenancyPlan,
    ) -> Self {
        let serving = Self {
            maker,
            app,
            process_metrics,
            state: Mutex::new(ServingState {
                live: pools
                    .into_iter()
                    .map(|parts| Live { parts, tasks: None })
                    .collect(),
                started: false,
                stopped: false,
                leaving: Vec::new(),
                reloads: 0,
                webhook_lines: plan.webhook_lines.clone(),
                files: plan.files.clone(),
            }),
            reloading: tokio::sync::Mutex::new(()),
        };
        serving.publish(&serving.lock().live, None);
        serving
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ServingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The metrics scraped and the cores checked for readiness: those of `live`; and
    /// with a new `plan`, the tenants' routes too.
    fn publish(&self, live: &[Live], plan: Option<&TenancyPlan>) {
        let shared = &self.maker.shared;
        shared.scrape.set(
            self.process_metrics
                .iter()
                .cloned()
                .chain(live.iter().map(|l| l.parts.metrics.clone()))
                .collect(),
        );
        shared
            .everyone
            .set(live.iter().map(|l| l.parts.users.clone()).collect());
        if let Some(plan) = plan {
            let states = live
                .iter()
                .filter_map(|l| {
                    let tenant = l.parts.tenant.clone()?;
                    Some((tenant, self.maker.state(&l.parts, plan)))
                })
                .collect();
            self.app.set_tenants(
                states,
                TenantSelection {
                    keys: plan.keys.clone(),
                    default: self.maker.config.tenancy.default_tenant.clone(),
                },
            );
        }
    }

    /// A clone of each pool's core and store, with its tenant.
    pub(super) fn pools(&self) -> Vec<(Option<TenantName>, Arc<Users>, Arc<SqlStore>)> {
        self.lock()
            .live
            .iter()
            .map(|l| {
                (
                    l.parts.tenant.clone(),
                    l.parts.users.clone(),
                    l.parts.store.clone(),
                )
            })
            .collect()
    }

    /// Starts every pool's background work.
    pub(super) fn start(&self) {
        let mut state = self.lock();
        state.started = true;
        for live in &mut state.live {
            if live.tasks.is_none() {
                live.tasks = Some(live.parts.start());
            }
        }
    }

    /// Stops every pool (see [`stop`]); a reload after it opens nothing.
    pub(super) async fn stop(&self, deadline: tokio::time::Instant) {
        let pools = {
            let mut state = self.lock();
            state.stopped = true;
            state.started = false;
            let leaving = std::mem::take(&mut state.leaving);
            let mut pools = std::mem::take(&mut state.live);
            pools.extend(leaving.into_iter().map(|(_, live)| live));
            pools
        };
        stop(pools, deadline).await;
    }

    /// Reads the tenants' files again and serves what they say now; see [`Reloader`].
    /// Counts the outcome in the process's metrics.
    async fn reload(self: &Arc<Self>) -> Result<Reloaded, StartError> {
        let outcome = self.reload_files().await;
        if let Some(metrics) = &self.process_metrics {
            if !self.lock().stopped {
                metrics.tenants_reloaded(match outcome {
                    Ok(_) => ReloadOutcome::done,
                    Err(_) => ReloadOutcome::refused,
                });
            }
        }
        outcome
    }

    /// With `--tenants-watch`, reads the tenants' files every so many seconds until
    /// the service stops, and reloads when they hold something other than what the
    /// served tenants were read from, and read the same twice in a row (a file caught
    /// while it is written is not taken). A refused reload is tried again at the next
    /// look.
    pub(super) fn watch(self: &Arc<Self>) {
        let seconds = self.maker.config.tenancy.tenants_watch;
        if seconds == 0 || self.process_metrics.is_none() {
            return;
        }
        let serving = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(seconds));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut watch = Watch::default();
            loop {
                ticks.tick().await;
                let (served, stopped) = {
                    let state = serving.lock();
                    (state.files.clone(), state.stopped)
                };
                if stopped {
                    break;
                }
                let now = files_digest(&serving.maker.config);
                if !watch.due(now, &served) {
                    continue;
                }
                if !watch.retrying() {
                    tracing::info!("the tenants' files changed: reloading the tenants");
                }
                if let Err(err) = serving.reload().await {
                    if serving.lock().stopped {
                        break;
                    }
                    // Tried again at each look (a database that was down may be back);
                    // logged as an error once until the files change.
                    let error = chain(&err);
                    if watch.refused() {
                        tracing::error!(error = %error, "the tenants were not reloaded; the service goes on as it was");
                    } else {
                        tracing::debug!(error = %error, "the tenants were not reloaded again");
                    }
                }
            }
        });
    }

    async fn reload_files(self: &Arc<Self>) -> Result<Reloaded, StartError> {
        let _one = self.reloading.lock().await;
        let config = &self.maker.config;
        if self.process_metrics.is_none() {
            return Err(StartError::Config(
                "there are no tenants to reload: the service runs without --tenancy".into(),
            ));
        }
        let plan = TenancyPlan::new(config)?;
        super::check_keys(config, &self.maker.access, &plan, |t| {
            self.maker.policy(t, &plan)
        })?;
        let (served, stopped) = {
            let state = self.lock();
            let served: Vec<TenantName> = state
                .live
                .iter()
                .filter_map(|l| l.parts.tenant.clone())
                .collect();
            (served, state.stopped)
        };
        if stopped {
            return Err(StartError::Config("the service has stopped".into()));
        }
        let wanted: Vec<TenantName> = plan.pools.iter().flatten().cloned().collect();
        let new: Vec<TenantName> = wanted
            .iter()
            .filter(|tenant| !served.contains(tenant))
            .cloned()
            .collect();
        let mut opened = Vec::new();
        for tenant in new {
            match self.maker.open(Some(&tenant), &plan, None, false).await {
                Ok(pool) => opened.push(pool),
                Err(err) => {
                    discard(opened).await;
                    return Err(err);
                }
            }
        }
        let mut reloaded = Reloaded {
            added: opened.iter().filter_map(|p| p.tenant.clone()).collect(),
            removed: Vec::new(),
        };
        let placed = {
            let mut state = self.lock();
            if state.stopped {
                Err(opened)
            } else {
                Ok(self.place(&mut state, opened, &plan, &wanted, &served))
            }
        };
        let (reload, removed) = match placed {
            Ok(placed) => placed,
            Err(opened) => {
                // The service stopped while the new pools were opened: close them.
                discard(opened).await;
                return Err(StartError::Config("the service has stopped".into()));
            }
        };
        if !removed.is_empty() {
            // Requests under way with a removed tenant's pool end by their deadlines at
            // the latest (one for reading the body, one for answering); then its work
            // stops and its store closes (unless the service stopped first, which stops
            // it with the rest).
            let grace = self.maker.shared.request_timeout.saturating_mul(2);
            let serving = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let gone: Vec<Live> = {
                    let mut state = serving.lock();
                    let (gone, staying) = std::mem::take(&mut state.leaving)
                        .into_iter()
                        .partition(|(number, _)| *number == reload);
                    state.leaving = staying;
                    gone.into_iter().map(|(_, live)| live).collect()
                };
                let names: Vec<String> = gone
                    .iter()
                    .filter_map(|l| l.parts.tenant.as_ref().map(ToString::to_string))
                    .collect();
                stop(gone, tokio::time::Instant::now() + grace).await;
                if !names.is_empty() {
                    tracing::info!(tenants = %names.join(","), "the removed tenants' pools are closed");
                }
            });
        }
        reloaded.removed = removed;
        let names = |tenants: &[TenantName]| {
            tenants
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        tracing::info!(
            added = %names(&reloaded.added),
            removed = %names(&reloaded.removed),
            tenants = %names(&wanted),
            "tenants reloaded"
        );
        Ok(reloaded)
    }
    /// Serves `opened` beside the pools kept, in the order of `wanted`, and lets go of
    /// the ones no longer wanted: the reload's number, and the tenants let go of.
    fn place(
        &self,
        state: &mut ServingState,
        opened: Vec<PoolParts>,
        plan: &TenancyPlan,
        wanted: &[TenantName],
        served: &[TenantName],
    ) -> (u64, Vec<TenantName>) {
        state.reloads += 1;
        let reload = state.reloads;
        for parts in opened {
            let tasks = state.started.then(|| parts.start());
            state.live.push(Live { parts, tasks });
        }
        let (staying, leaving): (Vec<Live>, Vec<Live>) = std::mem::take(&mut state.live)
            .into_iter()
            .partition(|l| l.parts.tenant.as_ref().is_some_and(|t| wanted.contains(t)));
        state.live = staying;
        let place = |l: &Live| {
            wanted
                .iter()
                .position(|t| Some(t) == l.parts.tenant.as_ref())
        };
        state.live.sort_by_key(place);
        let changed = served
            .iter()
            .filter(|tenant| state.webhook_lines.get(*tenant) != plan.webhook_lines.get(*tenant));
        for tenant in changed {
            tracing::warn!(tenant = %tenant, "the tenant's webhooks changed: they change at the next restart");
        }
        state.webhook_lines = plan.webhook_lines.clone();
        state.files = plan.files.clone();
        self.publish(&state.live, Some(plan));
        let removed: Vec<TenantName> = leaving
            .iter()
            .filter_map(|l| l.parts.tenant.clone())
            .collect();
        state
            .leaving
            .extend(leaving.into_iter().map(|live| (reload, live)));
        (reload, removed)
    }
}

/// What `--tenants-watch` has read: the digest of the files at its last look, and of
/// what a reload refused, once its error has been logged.
#[derive(Debug, Default)]
struct Watch {
    last: Option<String>,
    refused: Option<String>,
}

impl Watch {
    /// Whether to reload, with the files holding `now` and the tenants served read
    /// from `served`: they differ, and the last look read the same.
    fn due(&mut self, now: String, served: &str) -> bool {
        if self.refused.as_deref() != Some(now.as_str()) {
            self.refused = None;
        }
        let due = self.last.as_deref() == Some(now.as_str()) && now != served;
        self.last = Some(now);
        due
    }

    /// Whether the files still hold what a reload refused.
    fn retrying(&self) -> bool {
        self.refused.is_some()
    }

    /// The reload of what the last look read was refused: whether that is news (the
    /// first refusal since the files held it), to be logged as an error.
    fn refused(&mut self) -> bool {
        let news = self.refused.is_none();
        self.refused = self.last.clone();
        news
    }
}

/// Reloads a running service's tenants: reads `--tenants-file` and the tenants' other
/// files (keys, webhooks, looks) again. A tenant now listed is opened (its database
/// created and migrated, as at start) and served; one no longer listed is refused from
/// now on, and its store is closed once the requests under way with it are done (its
/// data stays). The tenants kept take their new keys and look; a change of their
/// webhooks takes a restart. Files that cannot be used change nothing: the error says
/// why, and the service goes on as it was.
#[derive(Clone)]
pub struct Reloader(pub(super) Arc<Serving>);

impl Reloader {
    pub async fn reload(&self) -> Result<Reloaded, StartError> {
        self.0.reload().await
    }
}

#[cfg(test)]
mod tests {
    use super::Watch;

    #[test]
    fn a_change_is_taken_once_it_reads_the_same_twice() {
        let mut watch = Watch::default();
        // At start the files hold what the tenants were read from.
        assert!(!watch.due("a".into(), "a"));
        // Caught while written, then read whole: taken at the second look.
        assert!(!watch.due("half".into(), "a"));
        assert!(!watch.due("b".into(), "a"));
        assert!(watch.due("b".into(), "a"));
        // Served now.
        assert!(!watch.due("b".into(), "b"));
        // Changed back before a second look: nothing to do.
        assert!(!watch.due("c".into(), "b"));
        assert!(!watch.due("b".into(), "b"));
    }

    #[test]
    fn a_refusal_is_news_once_until_the_files_change() {
        let mut watch = Watch::default();
        assert!(!watch.due("bad".into(), "a"));
        assert!(watch.due("bad".into(), "a"));
        assert!(watch.refused());
        // Tried again at each look, but no longer news.
        assert!(watch.due("bad".into(), "a"));
        assert!(watch.retrying());
        assert!(!watch.refused());
        // Mended: taken once it reads the same twice.
        assert!(!watch.due("good".into(), "a"));
        assert!(!watch.retrying());
        assert!(watch.due("good".into(), "a"));
        // Broken the same way later: news again.
        assert!(!watch.due("bad".into(), "good"));
        assert!(watch.due("bad".into(), "good"));
        assert!(!watch.retrying());
        assert!(watch.refused());
    }
}
