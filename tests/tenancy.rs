//! Tenants (`--tenancy namespace`): isolated user pools in one service, chosen by the
//! `Micro-Namespace` header or a tenant's own admin key; on SQLite and PostgreSQL, and
//! across two replicas.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use common::process::run;
use common::{Backend, TestApp, PASSWORD};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use users_service::config::{ServeConfig, Tenancy};
use users_service::server::Server;

const SERVICE_KEY: &str = "the-service-admin-key";
const ACME_KEY: &str = "acme-own-admin-key";
const GLOBEX_KEY: &str = "globex-own-admin-key";

/// Two tenants, the service's admin key, and a key of each tenant in a key file (kept
/// in `keys`, which must outlive the start).
fn tenants(config: &mut ServeConfig, keys: &std::path::Path) {
    std::fs::write(
        keys,
        format!("# tenant key\nacme {ACME_KEY}\n\nglobex   {GLOBEX_KEY}\n"),
    )
    .unwrap();
    config.tenancy.tenancy = Tenancy::Namespace;
    config.tenancy.tenants = vec!["acme".parse().unwrap(), "globex".parse().unwrap()];
    config.tenancy.tenant_keys_file = Some(keys.to_path_buf());
    config.access.api_key = Some(SERVICE_KEY.to_string());
}

/// Where calls go: a server, the namespace they name and the key they bear.
#[derive(Clone, Copy)]
struct At<'a> {
    client: &'a reqwest::Client,
    base: &'a str,
    namespace: Option<&'a str>,
    key: Option<&'a str>,
}

impl<'a> At<'a> {
    fn new(client: &'a reqwest::Client, base: &'a str, namespace: Option<&'a str>) -> Self {
        Self {
            client,
            base,
            namespace,
            key: None,
        }
    }

    /// The same, with `Authorization: Bearer <key>`.
    fn key(self, key: &'a str) -> Self {
        Self {
            key: Some(key),
            ..self
        }
    }

    /// POSTs `body` to `/users/Users/<method>`.
    async fn call(self, method: &str, body: Value) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("{}/users/Users/{method}", self.base))
            .json(&body);
        if let Some(namespace) = self.namespace {
            request = request.header("Micro-Namespace", namespace);
        }
        if let Some(key) = self.key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }
}

/// `/metrics` of the server at `base`, scraped with the service's key.
async fn metrics(client: &reqwest::Client, base: &str) -> String {
    let response = client
        .get(format!("{base}/metrics"))
        .bearer_auth(SERVICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

fn signup(name: &str, password: &str) -> Value {
    json!({"username": name, "email": format!("{name}@example.com"), "password": password})
}

fn login(name: &str, password: &str) -> Value {
    json!({"username": name, "password": password})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_keep_apart_accounts_sessions_limits_keys_audit_and_metrics_on_both_stores() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some((app, _dir)) = spawn_tenants(backend, "tenancy::two_tenants", |_| {}).await else {
            continue;
        };
        let (client, base) = (&app.client, app.base.as_str());
        let acme = At::new(client, base, Some("acme"));
        let globex = At::new(client, base, Some("globex"));
        let nobody = At::new(client, base, None);

        // The same username and address in both tenants: two accounts.
        let (status, a) = acme.call("Create", signup("alice", PASSWORD)).await;
        assert_eq!(status, 200, "{a}");
        let other_password = "another password entirely";
        let (status, g) = globex.call("Create", signup("alice", other_password)).await;
        assert_eq!(status, 200, "{g}");
        let (acme_alice, globex_alice) = (a["user"]["id"].clone(), g["user"]["id"].clone());
        assert_ne!(acme_alice, globex_alice);
        // Unique per tenant still: a second alice in acme is refused.
        let (status, body) = acme.call("Create", signup("alice", PASSWORD)).await;
        assert_eq!(status, 409, "{body}");

        // Each tenant checks its own password.
        let (status, body) = globex.call("Login", login("alice", PASSWORD)).await;
        assert_eq!(
            status, 401,
            "acme's password does not open globex's alice: {body}"
        );
        let (status, body) = acme.call("Login", login("alice", PASSWORD)).await;
        assert_eq!(status, 200, "{body}");
        let session = body["session"]["id"].as_str().unwrap().to_string();
        assert_eq!(body["session"]["user_id"], acme_alice);

        // A session of acme is valid in acme only.
        let read = json!({"session_id": session});
        let (status, body) = acme.call("ReadSession", read.clone()).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = globex.call("ReadSession", read.clone()).await;
        assert!(status == 401 || status == 404, "{status} {body}");
        let (status, body) = globex
            .key(&session)
            .call("Read", json!({"id": globex_alice}))
            .await;
        assert_eq!(
            status, 401,
            "acme's session signs nothing in globex: {body}"
        );
        // Nor does an account of one tenant exist in the other.
        let (status, _) = globex
            .key(SERVICE_KEY)
            .call("Read", json!({"id": acme_alice}))
            .await;
        assert_eq!(status, 404);

        // Limits are per tenant: bob locked out in acme still signs in in globex, from
        // the same address.
        for tenant in [acme, globex] {
            let (status, body) = tenant.call("Create", signup("bob", PASSWORD)).await;
            assert_eq!(status, 200, "{body}");
        }
        let mut refused = 0;
        for _ in 0..8 {
            let (status, _) = acme.call("Login", login("bob", "not the password")).await;
            assert!(status == 401 || status == 429, "{status}");
            refused += u32::from(status == 429);
        }
        assert!(refused > 0, "bob is locked out in acme");
        let (status, body) = acme.call("Login", login("bob", PASSWORD)).await;
        assert_eq!(status, 429, "{body}");
        let (status, body) = globex.call("Login", login("bob", PASSWORD)).await;
        assert_eq!(status, 200, "globex's bob is not locked: {body}");

        // Keys: the service's key is admin everywhere but names no tenant; a tenant's
        // key is admin of its tenant only, and selects it when no header does.
        let (status, body) = nobody.key(SERVICE_KEY).call("List", json!({})).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("Micro-Namespace"),
            "{body}"
        );
        let (status, body) = nobody.key(ACME_KEY).call("List", json!({})).await;
        assert_eq!(status, 200, "{body}");
        let ids: Vec<&Value> = body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| &u["id"])
            .collect();
        assert!(
            ids.contains(&&acme_alice) && !ids.contains(&&globex_alice),
            "{body}"
        );
        let (status, body) = nobody
            .key(GLOBEX_KEY)
            .call("Read", json!({"id": globex_alice}))
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = globex.key(ACME_KEY).call("List", json!({})).await;
        assert_eq!(status, 401, "acme's key is no admin in globex: {body}");
        let (status, body) = globex.key(SERVICE_KEY).call("List", json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["users"].as_array().unwrap().len(),
            2,
            "globex's alice and bob: {body}"
        );
        // The M3O SDKs send their key alone.
        let response = client
            .post(format!("{base}/v1/user/Read"))
            .bearer_auth(ACME_KEY)
            .json(&json!({"id": acme_alice}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["account"]["id"], acme_alice);
        // A namespace the service does not hold is refused, never created.
        for unknown in ["initech", "Acme", "acme; drop"] {
            let (status, body) = At::new(client, base, Some(unknown))
                .key(SERVICE_KEY)
                .call("List", json!({}))
                .await;
            assert_eq!(status, 400, "{unknown}: {body}");
            assert_eq!(body["id"], "users.List");
        }

        // The audit trail is per tenant.
        let (status, body) = acme
            .key(ACME_KEY)
            .call("ListAuditEvents", json!({"kind": "account.created"}))
            .await;
        assert_eq!(status, 200, "{body}");
        let audited: Vec<&Value> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["user_id"])
            .collect();
        assert_eq!(audited.len(), 2, "acme's alice and bob: {body}");
        assert!(audited.contains(&&acme_alice) && !audited.contains(&&globex_alice));

        // The metrics are labelled by tenant, each family written once.
        let text = metrics(client, base).await;
        let types = text
            .lines()
            .filter(|l| l.starts_with("# TYPE users_sessions_created_total "))
            .count();
        assert_eq!(types, 1, "{text}");
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let sessions = |tenant: &str| {
            scrape
                .samples
                .iter()
                .filter(|s| {
                    s.metric == "users_sessions_created_total"
                        && s.labels.get("tenant") == Some(tenant)
                        && s.labels.get("method") == Some("password")
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) => v,
                    _ => panic!("a counter"),
                })
                .sum::<f64>()
        };
        assert_eq!(sessions("acme"), 1.0, "{text}");
        assert_eq!(sessions("globex"), 1.0, "{text}");
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == "users_lockouts_total"
                    && s.labels.get("tenant") == Some("acme")),
            "{text}"
        );
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == "users_argon2_running" && s.labels.get("tenant").is_none()),
            "the hashing pool is the process's: {text}"
        );
        // The service as a whole is ready when every tenant's pool is; such a request
        // of the whole service counts as the process's, not as a tenant's.
        let response = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = metrics(client, base).await;
        let health: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("users_http_requests_total{") && l.contains("family=\"health\"")
            })
            .collect();
        assert!(
            !health.is_empty() && health.iter().all(|l| !l.contains("tenant=")),
            "{health:?}"
        );
    }
}

/// Two replicas on one PostgreSQL database hold the same tenants: a session and a
/// lockout of a tenant hold on both, and in that tenant only; concurrent failed
/// sign-ins across both replicas are counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_keep_the_tenants_apart_and_share_each_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("tenant-keys");
    let Some(app) = TestApp::spawn_with(Backend::Postgres, "tenancy::replicas", |c| {
        tenants(c, &keys);
        c.limits.login_max_failures_per_ip = 0;
    })
    .await
    else {
        return;
    };
    let replica = app
        .replica(|c| {
            tenants(c, &keys);
            c.limits.login_max_failures_per_ip = 0;
        })
        .await;
    let client = &app.client;
    let (one, two) = (app.base.clone(), format!("http://{}", replica.addr));
    let (status, body) = At::new(client, &one, Some("acme"))
        .call("Create", signup("carol", PASSWORD))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = At::new(client, &two, Some("globex"))
        .call("Create", signup("carol", PASSWORD))
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = At::new(client, &one, Some("acme"))
        .call("Login", login("carol", PASSWORD))
        .await;
    assert_eq!(status, 200, "{body}");
    let read = json!({"session_id": body["session"]["id"]});
    let (status, _) = At::new(client, &two, Some("acme"))
        .call("ReadSession", read.clone())
        .await;
    assert_eq!(status, 200, "the other replica knows acme's session");
    let (status, _) = At::new(client, &two, Some("globex"))
        .call("ReadSession", read)
        .await;
    assert!(status == 401 || status == 404, "{status}");

    // 12 wrong passwords at once, half on each replica: at most 5 are checked (the
    // limit), the rest refused; globex's carol is untouched.
    let attempts = (0..12).map(|i| {
        let base = if i % 2 == 0 { one.clone() } else { two.clone() };
        let client = client.clone();
        tokio::spawn(async move {
            At::new(&client, &base, Some("acme"))
                .call("Login", login("carol", "wrong password"))
                .await
                .0
        })
    });
    let mut checked = 0;
    for attempt in attempts {
        let status = attempt.await.unwrap();
        assert!(status == 401 || status == 429, "{status}");
        checked += u32::from(status == 401);
    }
    assert!(
        checked <= 5,
        "{checked} wrong passwords were checked, past the limit of 5"
    );
    for base in [&one, &two] {
        let (status, _) = At::new(client, base, Some("acme"))
            .call("Login", login("carol", PASSWORD))
            .await;
        assert_eq!(status, 429, "acme's carol is locked out on both replicas");
        let (status, body) = At::new(client, base, Some("globex"))
            .call("Login", login("carol", PASSWORD))
            .await;
        assert_eq!(status, 200, "globex's carol is not: {body}");
    }
}

/// `export --tenant` and `import --tenant` move one tenant's pool; the others stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_work_on_one_tenant_on_both_stores() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some((app, dir)) = spawn_tenants(backend, "tenancy::transfer", |_| {}).await else {
            continue;
        };
        let (status, body) = At::new(&app.client, &app.base, Some("acme"))
            .call("Create", signup("dana", PASSWORD))
            .await;
        assert_eq!(status, 200, "{body}");
        let db = app.into_database().await;
        let url = db.raw_url.as_str();

        let (ok, acme, err) = run(&["export", "--database-url", url, "--tenant", "acme"], None);
        assert!(ok, "{err}");
        assert!(String::from_utf8_lossy(&acme).contains("\"dana\""));
        let (ok, globex, err) = run(
            &["export", "--database-url", url, "--tenant", "globex"],
            None,
        );
        assert!(ok, "{err}");
        assert!(!String::from_utf8_lossy(&globex).contains("\"dana\""));

        let (ok, _, err) = run(
            &["import", "--database-url", url, "--tenant", "globex"],
            Some(&acme),
        );
        assert!(ok, "{err}");
        let (ok, globex, err) = run(
            &["export", "--database-url", url, "--tenant", "globex"],
            None,
        );
        assert!(ok, "{err}");
        assert!(String::from_utf8_lossy(&globex).contains("\"dana\""));
        let (ok, _, err) = run(&["export", "--database-url", url, "--tenant", "Acme"], None);
        assert!(!ok && err.contains("not a tenant name"), "{err}");

        // The imported dana signs in in globex with her password.
        let app = TestApp::spawn_on(db, |c| tenants(c, &dir.path().join("tenant-keys"))).await;
        let (status, body) = At::new(&app.client, &app.base, Some("globex"))
            .call("Login", login("dana", PASSWORD))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// The start refuses a tenancy it cannot serve as asked.
#[tokio::test]
async fn the_start_refuses_tenancy_settings_that_do_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("users.db").display());
    let keys = dir.path().join("tenant-keys");
    let refusal = |configure: &dyn Fn(&mut ServeConfig)| {
        let mut config = ServeConfig::new(db.parse().unwrap());
        tenants(&mut config, &keys);
        configure(&mut config);
        async move {
            match Server::build(&config).await {
                Ok(_) => panic!("the start should have been refused"),
                Err(err) => err.to_string(),
            }
        }
    };
    let err = refusal(&|c| c.tenancy.tenants.clear()).await;
    assert!(err.contains("needs the tenants"), "{err}");
    let list = dir.path().join("tenants");
    std::fs::write(&list, "# none yet\n").unwrap();
    let err = refusal(&|c| {
        c.tenancy.tenants.clear();
        c.tenancy.tenants_file = Some(list.clone());
    })
    .await;
    assert!(err.contains("names no tenant"), "{err}");
    let err = refusal(&|c| c.tenancy.tenants_file = Some(list.clone())).await;
    assert!(err.contains("by --tenants or by --tenants-file"), "{err}");
    let err = refusal(&|c| c.tenancy.default_tenant = Some("initech".parse().unwrap())).await;
    assert!(err.contains("not in --tenants"), "{err}");
    let err = refusal(&|c| c.tenancy.tenancy = Tenancy::Off).await;
    assert!(err.contains("need --tenancy namespace"), "{err}");
    let err = refusal(&|c| {
        c.tenancy.tenancy = Tenancy::Off;
        c.tenancy.tenants.clear();
        c.tenancy.tenant_keys_file = None;
        c.tenancy.tenants_watch = 5;
    })
    .await;
    assert!(
        err.contains("--tenants-watch need --tenancy namespace"),
        "{err}"
    );
    let err = refusal(&|c| c.database.tenant = Some("acme".parse().unwrap())).await;
    assert!(err.contains("--tenant names the pool"), "{err}");
    let err = refusal(&|c| {
        std::fs::write(c.tenancy.tenant_keys_file.as_ref().unwrap(), "initech k\n").unwrap();
    })
    .await;
    assert!(err.contains("initech is not in --tenants"), "{err}");
    let err = refusal(&|c| {
        std::fs::write(
            c.tenancy.tenant_keys_file.as_ref().unwrap(),
            format!("acme {SERVICE_KEY}\n"),
        )
        .unwrap();
    })
    .await;
    assert!(err.contains("is the service's admin key"), "{err}");
    // Tenants' own webhooks that cannot be sent, refused without repeating the secret.
    let hooks = dir.path().join("tenant-webhooks");
    for (line, why) in [
        (
            "initech whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw http://h/x",
            "not in --tenants",
        ),
        ("acme whsec_c2hvcnQ= http://h/x", "the secret: "),
        (
            "acme whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "expected \"TENANT SECRET URL",
        ),
        (
            "acme whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw ftp://h/x",
            "invalid webhook URL",
        ),
    ] {
        std::fs::write(&hooks, format!("{line}\n")).unwrap();
        let err = refusal(&|c| c.webhooks.webhook_tenants_file = Some(hooks.clone())).await;
        assert!(err.contains(why), "{line}: {err}");
        assert!(
            !err.contains("MfKQ9r8G") && !err.contains("c2hvcnQ"),
            "{err}"
        );
    }
    // A tenant's look that cannot be served.
    let looks = dir.path().join("looks");
    let err = refusal(&|c| c.ui.ui_tenant_dir = Some(looks.clone())).await;
    assert!(err.contains("is not a directory"), "{err}");
    std::fs::create_dir_all(looks.join("acme")).unwrap();
    std::fs::write(looks.join("acme/logo.png"), "png").unwrap();
    std::fs::write(looks.join("acme/logo.svg"), "<svg/>").unwrap();
    let err = refusal(&|c| c.ui.ui_tenant_dir = Some(looks.clone())).await;
    assert!(err.contains("more than one logo"), "{err}");
    std::fs::remove_file(looks.join("acme/logo.png")).unwrap();
    std::fs::write(looks.join("acme/title"), "\n").unwrap();
    let err = refusal(&|c| c.ui.ui_tenant_dir = Some(looks.clone())).await;
    assert!(err.contains("one line of 1-100 characters"), "{err}");
}

/// A service with the two tenants of [`tenants`] (with `configure` applied after);
/// None when the store is not available. The directory holds the key file, which must
/// outlive the start.
async fn spawn_tenants(
    backend: Backend,
    name: &str,
    configure: impl FnOnce(&mut ServeConfig),
) -> Option<(TestApp, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("tenant-keys");
    let app = TestApp::spawn_with(backend, name, |c| {
        tenants(c, &keys);
        configure(c);
    })
    .await?;
    Some((app, dir))
}

/// [`spawn_tenants`], sending e-mail to an SMTP sink.
async fn with_mail(
    backend: Backend,
    name: &str,
    configure: impl FnOnce(&mut ServeConfig),
) -> Option<(TestApp, common::smtp::SmtpSink, tempfile::TempDir)> {
    let sink = common::smtp::SmtpSink::start().await;
    let smtp = sink.url();
    let (app, dir) = spawn_tenants(backend, name, |c| {
        c.mail.smtp_url = Some(smtp);
        configure(c);
    })
    .await?;
    Some((app, sink, dir))
}

/// A verification e-mail of a tenant links to that tenant: the browser that opens it
/// sends no header, and the link verifies the tenant's account, not the default's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_link_verifies_in_its_own_tenant_on_both_stores() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some((app, sink, _dir)) = with_mail(backend, "tenancy::verification_link", |c| {
            c.tenancy.default_tenant = Some("acme".parse().unwrap());
        })
        .await
        else {
            continue;
        };
        let (client, base) = (&app.client, app.base.as_str());
        for tenant in ["acme", "globex"] {
            let (status, body) = At::new(client, base, Some(tenant))
                .call("Create", signup("erin", PASSWORD))
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let send = json!({
            "email": "erin@example.com",
            "text_content": "Open $micro_verification_link",
            "redirect_url": format!("{base}/done"),
            "failure_redirect_url": format!("{base}/failed"),
        });
        let (status, body) = At::new(client, base, Some("globex"))
            .key(SERVICE_KEY)
            .call("SendVerificationEmail", send)
            .await;
        assert_eq!(status, 200, "{body}");
        let mail = sink.next_mail("erin@example.com").await;
        let link = mail.link();
        assert!(link.contains("namespace=globex"), "{link}");
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = browser.get(&link).send().await.unwrap();
        assert_eq!(response.status(), 302);
        assert_eq!(response.headers()["location"], format!("{base}/done"));
        let verified = |tenant: &'static str| async move {
            let (status, body) = At::new(client, base, Some(tenant))
                .key(SERVICE_KEY)
                .call("Search", json!({"username": "erin"}))
                .await;
            assert_eq!(status, 200, "{body}");
            body["users"][0]["verified"].as_bool().unwrap()
        };
        assert!(verified("globex").await, "globex's erin is verified");
        assert!(!verified("acme").await, "the default tenant's erin is not");
    }
}

/// With tenants, each tenant's outbox numbers its own messages. A webhook's id and
/// payload name the tenant, so that a receiver of both tenants' events, which drops
/// duplicates by `webhook-id` as Standard Webhooks asks, keeps both tenants' first
/// `user.created` and tells them apart. A tenant given its own webhooks
/// (`--webhook-tenants-file`) sends its events there alone, signed with its own secret;
/// the others send to the service's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_name_their_tenant_in_their_ids_and_payloads_on_both_stores() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ACME_SECRET: &str = "whsec_QWNtZSBvd24gd2ViaG9vayBzZWNyZXQgMTIzNA==";
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let (received, mut deliveries) = tokio::sync::mpsc::unbounded_channel();
        let route = |to: &'static str| {
            let received = received.clone();
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let received = received.clone();
                async move {
                    let header = |name: &str| headers[name].to_str().unwrap().to_string();
                    let _ = received.send((
                        to,
                        header("webhook-id"),
                        header("webhook-timestamp"),
                        header("webhook-signature"),
                        body,
                    ));
                    axum::http::StatusCode::NO_CONTENT
                }
            })
        };
        let receiver = axum::Router::new()
            .route("/hooks", route("service"))
            .route("/acme-hooks", route("acme"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let served = tokio::spawn(async move { axum::serve(listener, receiver).await });
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("tenant-keys");
        let own = dir.path().join("tenant-webhooks");
        std::fs::write(
            &own,
            format!("# tenant secret urls\nacme {ACME_SECRET} http://{address}/acme-hooks\n"),
        )
        .unwrap();
        let Some(app) = TestApp::spawn_with(backend, "tenancy::webhooks", |c| {
            tenants(c, &keys);
            c.webhooks.webhook_urls = vec![format!("http://{address}/hooks")];
            c.webhooks.webhook_secret = Some(SECRET.into());
            c.webhooks.webhook_tenants_file = Some(own.clone());
        })
        .await
        else {
            served.abort();
            continue;
        };
        let (client, base) = (&app.client, app.base.as_str());
        let mut ids = std::collections::HashMap::new();
        for (tenant, name) in [("acme", "hana"), ("globex", "hana"), ("acme", "ines")] {
            let (status, body) = At::new(client, base, Some(tenant))
                .call("Create", signup(name, PASSWORD))
                .await;
            assert_eq!(status, 200, "{body}");
            ids.insert(body["user"]["id"].as_str().unwrap().to_string(), tenant);
        }
        let signer = |secret| users_service::core::webhooks::WebhookSender::new(secret).unwrap();
        let (service_signer, acme_signer) = (signer(SECRET), signer(ACME_SECRET));
        let mut seen = std::collections::HashMap::new();
        while seen.len() < 3 {
            let (to, id, timestamp, signature, body) =
                tokio::time::timeout(Duration::from_secs(30), deliveries.recv())
                    .await
                    .expect("the three user.created within 30 s")
                    .unwrap();
            let payload: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(payload["type"], "user.created", "{body}");
            let tenant = ids[payload["data"]["user_id"].as_str().unwrap()];
            assert_eq!(payload["data"]["tenant"], tenant, "{body}");
            assert!(
                id.starts_with(&format!("msg_users_{tenant}_")),
                "{tenant}'s message id names it: {id}"
            );
            // acme's own endpoint and secret; the service's for globex.
            let (endpoint, signer) = match tenant {
                "acme" => ("acme", &acme_signer),
                _ => ("service", &service_signer),
            };
            assert_eq!(to, endpoint, "{tenant}'s event went to {to}");
            assert_eq!(
                signature,
                signer.signature(&id, timestamp.parse().unwrap(), &body),
                "the id sent is the id signed, with {tenant}'s secret"
            );
            assert!(seen.insert(id, tenant).is_none(), "each message once");
        }
        let mut tenants: Vec<_> = seen.values().copied().collect();
        tenants.sort_unstable();
        assert_eq!(tenants, ["acme", "acme", "globex"], "{seen:?}");
        served.abort();
    }
}

/// The addresses of a page's links, forms and images under `root` (`/ui`, `/admin`),
/// but not the files every tenant's pages share.
fn addresses_under(html: &str, root: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attr in ["href=\"", "action=\"", "src=\""] {
        for (at, _) in html.match_indices(attr) {
            let value = &html[at + attr.len()..];
            let value = &value[..value.find('"').unwrap()];
            let shared = ["/ui/style.css", "/ui/passkeys.js"].contains(&value);
            if value.starts_with(root) && !shared {
                found.push(value.replace("&amp;", "&"));
            }
        }
    }
    found
}

/// The addresses of a page's links and forms that lead to the hosted pages.
fn page_addresses(html: &str) -> Vec<String> {
    addresses_under(html, "/ui")
}

/// Signs `name` up (`<name>@example.com`) on `tenant`'s sign-up page, as a browser from
/// the service's own origin: answers where it was sent next, and its session cookie.
async fn sign_up_on_page(
    browser: &reqwest::Client,
    base: &str,
    tenant: &str,
    name: &str,
) -> (String, String) {
    let email = format!("{name}@example.com");
    let response = browser
        .post(format!("{base}/ui/signup?namespace={tenant}"))
        .header("origin", base)
        .form(&[
            ("username", name),
            ("email", &email),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
    let cookie = header("set-cookie").split(';').next().unwrap().to_string();
    (header("location"), cookie)
}

/// The hosted pages of a tenant, named in their address (`?namespace=`), as a browser
/// opens them with no header and no default tenant: every link, form and redirect keeps
/// the tenant; a sign-up, its verification link, a sign-in by magic link and a sign-out
/// act in that tenant alone, and its cookie signs nothing in the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_hosted_pages_keep_to_their_tenant_on_both_stores() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some((app, sink, _dir)) = with_mail(backend, "tenancy::hosted_pages", |_| {}).await
        else {
            continue;
        };
        let base = app.base.as_str();
        let own = base.to_string();
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let location = |response: &reqwest::Response| {
            response.headers()["location"].to_str().unwrap().to_string()
        };
        let form = |path: &str, fields: &[(&str, &str)], cookie: Option<&str>| {
            let mut request = browser
                .post(format!("{base}{path}"))
                .header("origin", &own)
                .form(fields);
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            request.send()
        };
        let get = |path: &str, cookie: Option<&str>| {
            let mut request = browser.get(format!("{base}{path}"));
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            request.send()
        };

        // No tenant named and no default: refused. Named: every page address keeps it.
        assert_eq!(get("/ui/signin", None).await.unwrap().status(), 400);
        for page in ["/ui/signin", "/ui/signup", "/ui/forgot", "/ui/magic"] {
            let response = get(&format!("{page}?namespace=globex"), None)
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{page}");
            let html = response.text().await.unwrap();
            assert!(html.contains(r#"data-namespace="globex""#), "{page}");
            let addresses = page_addresses(&html);
            assert!(!addresses.is_empty(), "{page}");
            for address in addresses {
                assert!(address.ends_with("namespace=globex"), "{page}: {address}");
            }
        }

        // A sign-up on globex's page: the account is globex's, the browser lands on
        // globex's account page, and the verification link comes back to globex.
        let (to, cookie) = sign_up_on_page(&browser, base, "globex", "dora").await;
        assert_eq!(to, "/ui/account?notice=welcome&namespace=globex");
        let client = &app.client;
        let found = |tenant: &'static str| async move {
            let (status, body) = At::new(client, base, Some(tenant))
                .key(SERVICE_KEY)
                .call("Search", json!({"username": "dora"}))
                .await;
            (status, body)
        };
        let (status, searched) = found("globex").await;
        assert_eq!(
            (status, searched["users"][0]["username"].clone()),
            (StatusCode::OK, json!("dora"))
        );
        let (status, searched) = found("acme").await;
        assert_eq!(status, 200);
        assert_eq!(searched["users"], json!([]), "no dora in acme");
        let mail = sink.next_mail("dora@example.com").await;
        let link = mail.link();
        let verified = browser.get(&link).send().await.unwrap();
        assert_eq!(verified.status(), 302, "{link}");
        assert_eq!(
            location(&verified),
            format!("{base}/ui/verified?namespace=globex")
        );
        let landed = get("/ui/verified?namespace=globex", None).await.unwrap();
        assert_eq!(landed.status(), 200);
        let (_, searched) = found("globex").await;
        assert_eq!(searched["users"][0]["verified"], true, "{searched}");

        // The account page, in globex with its cookie; in acme the cookie is nobody's.
        let account = get("/ui/account?namespace=globex", Some(&cookie))
            .await
            .unwrap();
        assert_eq!(account.status(), 200);
        let html = account.text().await.unwrap();
        assert!(html.contains("dora@example.com"), "{html}");
        for address in page_addresses(&html) {
            assert!(address.ends_with("namespace=globex"), "{address}");
        }
        let elsewhere = get("/ui/account?namespace=acme", Some(&cookie))
            .await
            .unwrap();
        assert_eq!(elsewhere.status(), 303);
        let back = format!("{base}/ui/account?namespace=acme");
        let back: String = url::form_urlencoded::byte_serialize(back.as_bytes()).collect();
        assert_eq!(
            location(&elsewhere),
            format!("/ui/signin?return_to={back}&namespace=acme")
        );

        // Each tenant has its own cookie: signed in to acme too, the browser is signed
        // in to both, each page showing its own tenant's account.
        assert!(cookie.starts_with("users_session_globex="), "{cookie}");
        let (_, acme_cookie) = sign_up_on_page(&browser, base, "acme", "otto").await;
        assert!(
            acme_cookie.starts_with("users_session_acme="),
            "{acme_cookie}"
        );
        let both = format!("{cookie}; {acme_cookie}");
        for (tenant, shown) in [("globex", "dora@example.com"), ("acme", "otto@example.com")] {
            let page = get(&format!("/ui/account?namespace={tenant}"), Some(&both))
                .await
                .unwrap();
            assert_eq!(page.status(), 200, "{tenant}");
            assert!(page.text().await.unwrap().contains(shown), "{tenant}");
        }

        // Signed out on globex's page, back to globex's sign-in page.
        let out = form("/ui/signout?namespace=globex", &[], Some(&cookie))
            .await
            .unwrap();
        assert_eq!(out.status(), 303);
        assert_eq!(
            location(&out),
            "/ui/signin?notice=signed-out&namespace=globex"
        );

        // A magic link asked for on globex's page leads to globex's landing page, whose
        // button signs in to globex.
        let asked = form(
            "/ui/magic?namespace=globex",
            &[("email", "dora@example.com")],
            None,
        )
        .await
        .unwrap();
        assert_eq!(asked.status(), 200);
        let mail = sink.next_mail("dora@example.com").await;
        let link = mail.link();
        assert!(link.ends_with("?namespace=globex"), "{link}");
        let path = link.strip_prefix(base).unwrap().to_string();
        let landing = get(&path, None).await.unwrap();
        assert_eq!(landing.status(), 200);
        let html = landing.text().await.unwrap();
        let [action] = page_addresses(&html)
            .into_iter()
            .filter(|a| a.starts_with("/ui/magic/"))
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        assert_eq!(action, path);
        let signed_in = form(&path, &[], None).await.unwrap();
        assert_eq!(signed_in.status(), 303);
        assert_eq!(location(&signed_in), "/ui/account?namespace=globex");
    }
}

/// The admin console of a tenant, named in its address as the hosted pages are: a
/// tenant's own key signs in to that tenant's console only, whose pages, forms (the
/// search's too) and redirects keep the tenant and show its users alone; the sign-in
/// proves nothing in the other tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_console_keeps_to_its_tenant_on_both_stores() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some((app, _dir)) = spawn_tenants(backend, "tenancy::console", |_| {}).await else {
            continue;
        };
        let base = app.base.as_str();
        for (tenant, name) in [("acme", "ivy"), ("globex", "gus")] {
            let (status, body) = At::new(&app.client, base, Some(tenant))
                .call("Create", signup(name, PASSWORD))
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let location = |response: &reqwest::Response| {
            response.headers()["location"].to_str().unwrap().to_string()
        };
        let sign_in = |tenant: &str, key: &str| {
            browser
                .post(format!("{base}/admin/signin?namespace={tenant}"))
                .header("origin", base)
                .form(&[("key", key)])
                .send()
        };
        let get = |path: &str, cookie: &str| {
            browser
                .get(format!("{base}{path}"))
                .header("cookie", cookie)
                .send()
        };

        assert_eq!(
            browser
                .get(format!("{base}/admin"))
                .send()
                .await
                .unwrap()
                .status(),
            400,
            "no tenant named, no default"
        );
        let refused = sign_in("globex", ACME_KEY).await.unwrap();
        assert_eq!(refused.status(), 401, "acme's key is no admin of globex");
        let signed_in = sign_in("acme", ACME_KEY).await.unwrap();
        assert_eq!(signed_in.status(), 303);
        assert_eq!(location(&signed_in), "/admin/users?namespace=acme");
        let cookie = signed_in.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_string();

        let users = get("/admin/users?namespace=acme", &cookie).await.unwrap();
        assert_eq!(users.status(), 200);
        let html = users.text().await.unwrap();
        assert!(html.contains("ivy") && !html.contains("gus"), "{html}");
        assert!(
            html.contains(r#"<input type="hidden" name="namespace" value="acme">"#),
            "the search form keeps the tenant: {html}"
        );
        let addresses: Vec<_> = page_addresses(&html)
            .into_iter()
            .chain(addresses_under(&html, "/admin"))
            .collect();
        assert!(addresses.iter().any(|a| a.starts_with("/admin/users/")));
        for address in addresses {
            assert!(address.ends_with("namespace=acme"), "{address}");
        }
        let searched = get("/admin/users?q=ivy&namespace=acme", &cookie)
            .await
            .unwrap();
        assert!(searched.text().await.unwrap().contains("ivy"));

        // acme's sign-in is nothing in globex's console, even under globex's cookie's
        // name; signed in there too, the browser holds both consoles.
        assert!(cookie.starts_with("users_console_acme="), "{cookie}");
        let elsewhere = get("/admin/users?namespace=globex", &cookie).await.unwrap();
        assert_eq!(elsewhere.status(), 303);
        assert_eq!(location(&elsewhere), "/admin?namespace=globex");
        let forged = cookie.replace("users_console_acme=", "users_console_globex=");
        let elsewhere = get("/admin/users?namespace=globex", &forged).await.unwrap();
        assert_eq!(elsewhere.status(), 303, "acme's sign-in is signed for acme");
        let globex = sign_in("globex", GLOBEX_KEY).await.unwrap();
        assert_eq!(globex.status(), 303);
        let globex_cookie = globex.headers()["set-cookie"].to_str().unwrap();
        let both = format!("{cookie}; {}", globex_cookie.split(';').next().unwrap());
        for (tenant, shown) in [("acme", "ivy"), ("globex", "gus")] {
            let page = get(&format!("/admin/users?namespace={tenant}"), &both)
                .await
                .unwrap();
            assert_eq!(page.status(), 200, "{tenant}");
            assert!(page.text().await.unwrap().contains(shown), "{tenant}");
        }
    }
}

/// With `--ui-tenant-dir`, a tenant's pages and console wear its own title, stylesheet
/// and logo, served under its name; its title also names it in authenticator apps; a
/// tenant without a folder wears the service's look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_wears_its_own_look() {
    let dir = tempfile::tempdir().unwrap();
    let looks = dir.path().join("looks");
    std::fs::create_dir_all(looks.join("acme")).unwrap();
    std::fs::write(looks.join("acme/title"), "Acme Accounts\n").unwrap();
    std::fs::write(looks.join("acme/brand.css"), "body { color: #a00; }").unwrap();
    std::fs::write(
        looks.join("acme/logo.svg"),
        "<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
    )
    .unwrap();
    let (app, _keys) = spawn_tenants(Backend::Sqlite, "tenancy::look", |c| {
        c.ui.ui_title = "Platform".to_string();
        c.ui.ui_tenant_dir = Some(looks.clone());
    })
    .await
    .unwrap();
    let base = app.base.as_str();
    let get = |path: &str| app.client.get(format!("{base}{path}")).send();
    let page = |path: &'static str| async move { get(path).await.unwrap().text().await.unwrap() };

    let acme = page("/ui/signin?namespace=acme").await;
    assert!(
        acme.contains("<title>Sign in · Acme Accounts</title>"),
        "{acme}"
    );
    assert!(
        acme.contains(r#"href="/ui/brand.css?namespace=acme""#),
        "{acme}"
    );
    assert!(acme.contains(r#"src="/ui/logo?namespace=acme""#), "{acme}");
    for address in page_addresses(&acme) {
        assert!(address.ends_with("namespace=acme"), "{address}");
    }
    let css = get("/ui/brand.css?namespace=acme").await.unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(css.text().await.unwrap(), "body { color: #a00; }");
    let logo = get("/ui/logo?namespace=acme").await.unwrap();
    assert_eq!(logo.headers()["content-type"], "image/svg+xml");

    let globex = page("/ui/signin?namespace=globex").await;
    assert!(
        globex.contains("<title>Sign in · Platform</title>"),
        "{globex}"
    );
    assert!(
        !globex.contains("brand.css") && !globex.contains("/ui/logo"),
        "{globex}"
    );
    assert_eq!(
        get("/ui/brand.css?namespace=globex")
            .await
            .unwrap()
            .status(),
        404
    );

    // The authenticator app shows acme's name for acme's accounts.
    let at = At::new(&app.client, base, Some("acme"));
    let (status, body) = at.call("Create", signup("tia", PASSWORD)).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = at.call("Login", login("tia", PASSWORD)).await;
    let session = body["session"]["id"].as_str().unwrap().to_string();
    let (status, started) = at.key(&session).call("StartTotp", json!({})).await;
    assert_eq!(status, 200, "{started}");
    let uri = started["uri"].as_str().unwrap();
    assert!(uri.contains("issuer=Acme%20Accounts"), "{uri}");
}

/// In `dir`, a tenants file that lists acme, and a keys file with acme's key.
fn acme_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (list, keys) = (dir.join("tenants"), dir.join("tenant-keys"));
    std::fs::write(&list, "# the tenants\nacme\n").unwrap();
    std::fs::write(&keys, format!("acme {ACME_KEY}\n")).unwrap();
    (list, keys)
}

/// Tenancy with the tenants of `list` and their keys in `keys`, and the service's key.
fn from_files(config: &mut ServeConfig, list: &std::path::Path, keys: &std::path::Path) {
    config.tenancy.tenancy = Tenancy::Namespace;
    config.tenancy.tenants_file = Some(list.to_path_buf());
    config.tenancy.tenant_keys_file = Some(keys.to_path_buf());
    config.access.api_key = Some(SERVICE_KEY.to_string());
}

/// Tenants come and go without a restart. With `--tenants-file`, a reload (SIGHUP to
/// the binary) serves a tenant newly listed, with its own key, on each replica that
/// reloads; requests under way meanwhile are answered; a tenant no longer listed is
/// refused from then on, and its accounts are there again when it is listed again.
/// Files that cannot be used change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_added_and_removed_by_a_reload_on_both_stores() {
    use users_service::server::Reloaded;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let (list, keys) = acme_files(dir.path());
        let configure = |c: &mut ServeConfig| from_files(c, &list, &keys);
        let Some(app) = TestApp::spawn_with(backend, "tenancy::reload", configure).await else {
            continue;
        };
        let replica = app.replica(configure).await;
        let client = &app.client;
        let other = format!("http://{}", replica.addr);
        let acme = At::new(client, &app.base, Some("acme"));
        let globex = At::new(client, &app.base, Some("globex"));
        let (status, body) = acme.call("Create", signup("alice", PASSWORD)).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = globex.call("Create", signup("bob", PASSWORD)).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("names no tenant"),
            "{body}"
        );

        // globex is listed, with its key; acme is busy while the service reloads.
        std::fs::write(&list, "acme\nglobex\n").unwrap();
        std::fs::write(&keys, format!("acme {ACME_KEY}\nglobex {GLOBEX_KEY}\n")).unwrap();
        let (_, session) = acme.call("Login", login("alice", PASSWORD)).await;
        let session_id = session["session"]["id"].clone();
        let busy = async {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                let (status, body) = acme
                    .call("ReadSession", json!({ "session_id": session_id }))
                    .await;
                statuses.push((status, body["session"]["username"].clone()));
            }
            statuses
        };
        let (statuses, reloaded) = tokio::join!(busy, app.reloader.reload());
        assert!(
            statuses
                .iter()
                .all(|(s, name)| *s == 200 && name == "alice"),
            "{statuses:?}"
        );
        let globex_name: users_service::domain::TenantName = "globex".parse().unwrap();
        let acme_name: users_service::domain::TenantName = "acme".parse().unwrap();
        assert_eq!(
            reloaded.unwrap(),
            Reloaded {
                added: vec![globex_name.clone()],
                removed: vec![],
            }
        );
        let (status, body) = globex.call("Create", signup("bob", PASSWORD)).await;
        assert_eq!(status, 200, "{body}");
        let bob = body["user"]["id"].clone();
        // Its own key selects it and reads its accounts only.
        let by_key = At::new(client, &app.base, None).key(GLOBEX_KEY);
        let (status, body) = by_key.call("Read", json!({ "username": "bob" })).await;
        assert_eq!(
            (status, &body["user"]["id"]),
            (StatusCode::OK, &bob),
            "{body}"
        );
        let (status, _) = by_key.call("Read", json!({ "username": "alice" })).await;
        assert_eq!(status, 404);
        // Its metrics are scraped, and the service is ready with it.
        let scraped = metrics(client, &app.base).await;
        assert!(scraped.contains("tenant=\"globex\""), "{scraped}");
        let ready = client
            .get(format!("{}/health/ready", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);

        // The replica serves globex once it reloads too, on the same database.
        let at_replica = At::new(client, &other, Some("globex")).key(SERVICE_KEY);
        let (status, _) = at_replica.call("Read", json!({ "username": "bob" })).await;
        assert_eq!(status, 400, "not reloaded yet");
        assert_eq!(
            replica.reloader.reload().await.unwrap().added,
            vec![globex_name.clone()]
        );
        let (status, body) = at_replica.call("Read", json!({ "username": "bob" })).await;
        assert_eq!(
            (status, &body["user"]["id"]),
            (StatusCode::OK, &bob),
            "{body}"
        );

        // acme is no longer listed: refused from now on, its key too.
        std::fs::write(&list, "globex\n").unwrap();
        std::fs::write(&keys, format!("globex {GLOBEX_KEY}\n")).unwrap();
        assert_eq!(
            app.reloader.reload().await.unwrap(),
            Reloaded {
                added: vec![],
                removed: vec![acme_name.clone()],
            }
        );
        let (status, body) = acme.call("Login", login("alice", PASSWORD)).await;
        assert_eq!(status, 400, "{body}");
        let (status, _) = At::new(client, &app.base, None)
            .key(ACME_KEY)
            .call("Read", json!({ "username": "alice" }))
            .await;
        assert_eq!(status, 400, "the key selects no tenant");
        // Listed again, its accounts are there: alice signs in.
        std::fs::write(&list, "globex\nacme\n").unwrap();
        assert_eq!(app.reloader.reload().await.unwrap().added, vec![acme_name]);
        let (status, body) = acme.call("Login", login("alice", PASSWORD)).await;
        assert_eq!(status, 200, "{body}");

        // Files that cannot be used change nothing: the error says why.
        std::fs::write(&keys, format!("initech {ACME_KEY}\n")).unwrap();
        let err = app.reloader.reload().await.unwrap_err().to_string();
        assert!(err.contains("the tenant initech is not in"), "{err}");
        assert!(!err.contains(ACME_KEY), "{err}");
        std::fs::write(&list, "globex\nnot a name\n").unwrap();
        let err = app.reloader.reload().await.unwrap_err().to_string();
        assert!(err.contains(":2:"), "{err}");
        let (status, body) = acme.call("Login", login("alice", PASSWORD)).await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = globex.call("Login", login("bob", PASSWORD)).await;
        assert_eq!(status, 200);
    }
}

/// The value of the counter `series` (its name and labels, as `/metrics` writes them)
/// at `base`.
async fn counted(client: &reqwest::Client, base: &str, series: &str) -> u64 {
    let scraped = metrics(client, base).await;
    scraped
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {scraped}"))
}

/// The status of `method` for `tenant` at `base`, with the service's key.
async fn status_at(
    client: &reqwest::Client,
    base: &str,
    tenant: &str,
    method: &str,
    body: Value,
) -> StatusCode {
    At::new(client, base, Some(tenant))
        .key(SERVICE_KEY)
        .call(method, body)
        .await
        .0
}

/// Waits until `holds` answers true, looking every 50 ms, for 20 s at the most.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut holds: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !holds().await {
        assert!(std::time::Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `--tenants-watch`, every replica that reads the tenants' files follows them
/// without a signal: a tenant listed with its key is served by each, files that cannot
/// be used change nothing (and count as refused reloads), and a tenant taken off the
/// list is refused by each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_watching_the_tenants_files_follow_them_on_both_stores() {
    const DONE: &str = "users_tenant_reloads_total{outcome=\"done\"}";
    const REFUSED: &str = "users_tenant_reloads_total{outcome=\"refused\"}";
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let (list, keys) = acme_files(dir.path());
        let configure = |c: &mut ServeConfig| {
            from_files(c, &list, &keys);
            c.tenancy.tenants_watch = 1;
        };
        let Some(app) = TestApp::spawn_with(backend, "tenancy::watch", configure).await else {
            continue;
        };
        let replica = app.replica(configure).await;
        let client = &app.client;
        let other = format!("http://{}", replica.addr);
        let bases = [app.base.as_str(), other.as_str()];
        let (status, body) = At::new(client, &app.base, Some("acme"))
            .call("Create", signup("alice", PASSWORD))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            status_at(
                client,
                &app.base,
                "globex",
                "Create",
                signup("bob", PASSWORD)
            )
            .await,
            400
        );

        // globex is listed, with its own key: each replica serves it.
        std::fs::write(&keys, format!("acme {ACME_KEY}\nglobex {GLOBEX_KEY}\n")).unwrap();
        std::fs::write(&list, "acme\nglobex\n").unwrap();
        for base in bases {
            until("globex served", || async {
                status_at(client, base, "globex", "Read", json!({"username": "bob"})).await == 404
            })
            .await;
        }
        let (status, body) = At::new(client, &other, None)
            .key(GLOBEX_KEY)
            .call("Create", signup("bob", PASSWORD))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            status_at(
                client,
                &app.base,
                "globex",
                "Read",
                json!({"username": "bob"})
            )
            .await,
            200
        );
        for base in bases {
            assert_eq!(counted(client, base, DONE).await, 1, "{base}");
            assert_eq!(counted(client, base, REFUSED).await, 0, "{base}");
        }

        // A keys file that cannot be used (globex's key is the service's): nothing
        // changes, initech is not served, and each replica counts the refusal.
        std::fs::write(&keys, format!("globex {SERVICE_KEY}\n")).unwrap();
        std::fs::write(&list, "acme\nglobex\ninitech\n").unwrap();
        for base in bases {
            until("the refusal counted", || async {
                counted(client, base, REFUSED).await >= 1
            })
            .await;
            assert_eq!(
                status_at(client, base, "initech", "Read", json!({"username": "bob"})).await,
                400
            );
            let (status, _) = At::new(client, base, None)
                .key(GLOBEX_KEY)
                .call("Read", json!({"username": "bob"}))
                .await;
            assert_eq!(status, 200, "globex's key as it was");
        }

        // Mended, and acme taken off the list: each refuses acme and serves initech.
        std::fs::write(&keys, format!("globex {GLOBEX_KEY}\n")).unwrap();
        std::fs::write(&list, "globex\ninitech\n").unwrap();
        for base in bases {
            until("acme refused", || async {
                status_at(client, base, "acme", "Read", json!({"username": "alice"})).await == 400
            })
            .await;
            assert_eq!(
                status_at(client, base, "initech", "Read", json!({"username": "bob"})).await,
                404
            );
            assert_eq!(counted(client, base, DONE).await, 2, "{base}");
        }
    }
}

/// `migrate` and `reseal` given the tenants as `serve` is (`--tenants`, `--tenants-file`
/// or their variables) work on each in turn, naming it in their lines; `--tenant`
/// narrows them to one; the first tenant that fails stops them, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_reseal_work_on_every_tenant_on_both_stores() {
    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some((app, dir)) = spawn_tenants(backend, "tenancy::each", |_| {}).await else {
            continue;
        };
        // A TOTP secret stored in clear in each tenant.
        for tenant in ["acme", "globex"] {
            let at = At::new(&app.client, &app.base, Some(tenant));
            let (status, body) = at.call("Create", signup("tia", PASSWORD)).await;
            assert_eq!(status, 200, "{body}");
            let (_, body) = at.call("Login", login("tia", PASSWORD)).await;
            let session = body["session"]["id"].as_str().unwrap().to_string();
            let (status, body) = at.key(&session).call("StartTotp", json!({})).await;
            assert_eq!(status, 200, "{body}");
        }
        let db = app.into_database().await;
        let url = db.raw_url.as_str();
        // The lines of `stderr` that say `what`: one for each pair of `expected`, in
        // order, holding both of its parts.
        let said = |stderr: &str, what: &str, expected: &[(&str, &str)]| {
            let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(what)).collect();
            assert_eq!(lines.len(), expected.len(), "{stderr}");
            for (line, (one, other)) in lines.iter().zip(expected) {
                assert!(line.contains(one) && line.contains(other), "{stderr}");
            }
        };

        let (ok, _, stderr) = run(
            &[
                "migrate",
                "--database-url",
                url,
                "--tenants",
                "acme,globex,initech",
            ],
            None,
        );
        assert!(ok, "{stderr}");
        said(
            &stderr,
            "the database schema is up to date",
            &[
                ("nothing to do", "tenant=acme"),
                ("nothing to do", "tenant=globex"),
                ("migrations applied", "tenant=initech"),
            ],
        );

        let list = dir.path().join("tenants");
        std::fs::write(&list, "# every tenant\nacme\nglobex\n").unwrap();
        let list = list.to_str().unwrap();
        let (ok, _, stderr) = run(
            &[
                "reseal",
                "--database-url",
                url,
                "--tenants-file",
                list,
                "--encryption-key",
                KEY,
            ],
            None,
        );
        assert!(ok, "{stderr}");
        said(
            &stderr,
            "reseal done",
            &[("tenant=acme", "sealed=1"), ("tenant=globex", "sealed=1")],
        );
        assert!(!stderr.contains(KEY), "the key is never printed");

        // --tenant narrows the tenants of the environment to one.
        let cwd = tempfile::tempdir().unwrap();
        let output = common::process::command(cwd.path())
            .args(["reseal", "--database-url", url, "--tenant", "globex"])
            .env("USERS_TENANTS", "acme,globex")
            .env("USERS_ENCRYPTION_KEY", KEY)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        said(&stderr, "reseal done", &[("tenant=globex", "unchanged=1")]);

        // A tenant with no pool stops the command, named.
        let (ok, _, stderr) = run(
            &[
                "reseal",
                "--database-url",
                url,
                "--tenants",
                "acme,nowhere",
                "--encryption-key",
                KEY,
            ],
            None,
        );
        assert!(!ok, "{stderr}");
        said(&stderr, "reseal done", &[("tenant=acme", "unchanged=1")]);
        assert!(stderr.contains("error: the tenant nowhere: "), "{stderr}");
        let (ok, _, stderr) = run(
            &[
                "migrate",
                "--database-url",
                url,
                "--tenants",
                "acme",
                "--tenants-file",
                list,
            ],
            None,
        );
        assert!(
            !ok && stderr.contains("by --tenants or by --tenants-file"),
            "{stderr}"
        );
    }
}
