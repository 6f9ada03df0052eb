//! Tenants as `serve` is told of them: which pools to open, the tenants' own keys,
//! webhooks and looks, read from their files at start and again at each reload.

use std::collections::HashMap;

use crate::config::{ServeConfig, Tenancy};
use crate::core::webhooks::WebhookSender;
use crate::domain::TenantName;
use secrecy::ExposeSecret;

use crate::http::access::key_digest;
use crate::http::ui::Asset;

use super::{logo_asset, read_look, stylesheet_asset, StartError};

/// The pools `serve` opens, from `--tenancy`, `--tenants` (or `--tenants-file`) and
/// the tenants' files: made at start, and made again from the files at each reload.
pub(super) struct TenancyPlan {
    pub(super) on: bool,
    /// `[None]` without tenants; each tenant otherwise.
    pub(super) pools: Vec<Option<TenantName>>,
    /// Each tenant's own admin keys (SHA-256).
    pub(super) keys: Vec<([u8; 32], TenantName)>,
    /// Tenants' own webhooks (`--webhook-tenants-file`): their endpoints and sender.
    pub(super) webhooks: HashMap<TenantName, (Vec<String>, WebhookSender)>,
    /// The tenants' own looks (`--ui-tenant-dir`), where they have one.
    pub(super) looks: HashMap<TenantName, TenantLook>,
    /// The SHA-256 of each tenant's webhook line (to tell a change at a reload without
    /// keeping its secret twice).
    pub(super) webhook_lines: HashMap<TenantName, String>,
    /// What the tenants' files held just before the plan read them ([`files_digest`]).
    pub(super) files: String,
}

impl TenancyPlan {
    pub(super) fn new(config: &ServeConfig) -> Result<Self, StartError> {
        let tenancy = &config.tenancy;
        let refuse = |why: String| Err(StartError::Config(why));
        if config.database.tenant.is_some() {
            return refuse(
                "--tenant names the pool of an admin command; serve takes --tenancy \
                 namespace and --tenants"
                    .into(),
            );
        }
        if tenancy.tenancy == Tenancy::Off {
            if !tenancy.tenants.is_empty()
                || tenancy.tenants_file.is_some()
                || tenancy.default_tenant.is_some()
                || tenancy.tenant_keys_file.is_some()
                || config.ui.ui_tenant_dir.is_some()
                || config.webhooks.webhook_tenants_file.is_some()
                || tenancy.tenants_watch > 0
            {
                return refuse(
                    "--tenants, --tenants-file, --default-tenant, --tenant-keys-file, \
                     --ui-tenant-dir, --webhook-tenants-file and --tenants-watch need \
                     --tenancy namespace"
                        .into(),
                );
            }
            return Ok(Self {
                on: false,
                pools: vec![None],
                keys: Vec::new(),
                webhooks: HashMap::new(),
                looks: HashMap::new(),
                webhook_lines: HashMap::new(),
                files: String::new(),
            });
        }
        // Only --tenants-watch compares it. Taken before the files are read: if they
        // change while they are, the digest is of what they held before, so the change
        // is seen and read again.
        let files = if tenancy.tenants_watch > 0 {
            files_digest(config)
        } else {
            String::new()
        };
        let tenants =
            crate::config::listed_tenants(&tenancy.tenants, tenancy.tenants_file.as_deref())
                .map_err(StartError::Config)?;
        let source = match &tenancy.tenants_file {
            Some(path) => path.display().to_string(),
            None => "--tenants".to_string(),
        };
        if tenants.is_empty() {
            return refuse(match &tenancy.tenants_file {
                Some(path) => format!("the tenants file {} names no tenant", path.display()),
                None => "--tenancy namespace needs the tenants: --tenants NAME,NAME or \
                         --tenants-file FILE"
                    .into(),
            });
        }
        let mut pools: Vec<Option<TenantName>> = Vec::new();
        for tenant in &tenants {
            if pools.iter().flatten().any(|t| t == tenant) {
                return refuse(format!("the tenant {tenant} is listed twice in {source}"));
            }
            pools.push(Some(tenant.clone()));
        }
        let listed = |tenant: &TenantName| tenants.contains(tenant);
        if let Some(default) = &tenancy.default_tenant {
            if !listed(default) {
                return refuse(format!("--default-tenant {default} is not in {source}"));
            }
        }
        let mut keys = Vec::new();
        if let Some(path) = &tenancy.tenant_keys_file {
            for (at, tenant, key) in tenant_lines(path, "the tenant keys file", &listed, &source)? {
                if key.is_empty() {
                    return refuse(format!("{at}: expected \"TENANT KEY\""));
                }
                let digest = key_digest(&key);
                if keys.iter().any(|(d, _)| *d == digest) {
                    return refuse(format!("{at}: this key is given twice"));
                }
                keys.push((digest, tenant));
            }
        }
        if let Some(global) = super::admin_key(&config.access)? {
            let global = key_digest(global.expose_secret());
            if keys.iter().any(|(d, _)| *d == global) {
                return refuse(
                    "a tenant's key in --tenant-keys-file is the service's admin key".into(),
                );
            }
        }
        let mut webhooks = HashMap::new();
        let mut webhook_lines = HashMap::new();
        if let Some(path) = &config.webhooks.webhook_tenants_file {
            let lines = tenant_lines(path, "the tenants' webhooks file", &listed, &source)?;
            for (at, tenant, rest) in lines {
                // The line's secret is never repeated in a message.
                let mut fields = rest.split_whitespace();
                let (Some(secret), Some(urls), None) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    return refuse(format!("{at}: expected \"TENANT SECRET URL[,URL...]\""));
                };
                if webhooks.contains_key(&tenant) {
                    return refuse(format!("{at}: the tenant {tenant} is listed twice"));
                }
                let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
                let urls = crate::config::webhook_urls(&urls)
                    .map_err(|why| StartError::Config(format!("{at}: {why}")))?;
                let sender = WebhookSender::new(secret)
                    .map_err(|why| StartError::Config(format!("{at}: the secret: {why}")))?;
                webhook_lines.insert(tenant.clone(), crate::domain::sha256_hex(rest.as_bytes()));
                webhooks.insert(tenant, (urls, sender));
            }
        }
        let mut looks = HashMap::new();
        if let Some(dir) = &config.ui.ui_tenant_dir {
            if !dir.is_dir() {
                return refuse(format!(
                    "--ui-tenant-dir {} is not a directory",
                    dir.display()
                ));
            }
            for tenant in &tenants {
                looks.insert(tenant.clone(), tenant_look(dir, tenant)?);
            }
        }
        Ok(Self {
            on: true,
            pools,
            keys,
            webhooks,
            looks,
            webhook_lines,
            files,
        })
    }

    /// `tenant`'s own admin keys.
    pub(super) fn keys_of(&self, tenant: &TenantName) -> Vec<[u8; 32]> {
        self.keys
            .iter()
            .filter(|(_, t)| t == tenant)
            .map(|(digest, _)| *digest)
            .collect()
    }
}

/// One digest of what the tenants' files hold now: `--tenants-file`,
/// `--tenant-keys-file`, `--webhook-tenants-file`, and the files in the tenants'
/// folders of `--ui-tenant-dir`. A file that cannot be read counts by its error, so
/// that one taken away is a change too. `--tenants-watch` reloads when it is no longer
/// the digest the served plan was made after.
pub(super) fn files_digest(config: &ServeConfig) -> String {
    use sha2::{Digest, Sha256};
    use std::path::{Path, PathBuf};
    fn add(hasher: &mut Sha256, path: &Path) {
        let name = path.as_os_str().as_encoded_bytes();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        match std::fs::read(path) {
            Ok(bytes) => {
                hasher.update([1]);
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
            Err(err) => {
                hasher.update([0]);
                hasher.update(format!("{:?}", err.kind()).as_bytes());
            }
        }
    }
    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|read| read.flatten().map(|entry| entry.path()).collect())
            .unwrap_or_default();
        paths.sort();
        paths
    }
    let mut hasher = Sha256::new();
    let files = [
        &config.tenancy.tenants_file,
        &config.tenancy.tenant_keys_file,
        &config.webhooks.webhook_tenants_file,
    ];
    for path in files.into_iter().flatten() {
        add(&mut hasher, path);
    }
    if let Some(dir) = &config.ui.ui_tenant_dir {
        add(&mut hasher, dir);
        for folder in entries(dir).iter().filter(|path| path.is_dir()) {
            for file in entries(folder).iter().filter(|path| path.is_file()) {
                add(&mut hasher, file);
            }
        }
    }
    format!("{:x}", hasher.finalize())
}

/// The lines of a file of tenants' settings, `TENANT ...` each (blank lines and `#`
/// comments skipped): where each is (`file:line`), its tenant, which must be `listed`
/// (in `source`, --tenants or the tenants file), and the rest of the line.
fn tenant_lines(
    path: &std::path::Path,
    what: &str,
    listed: &dyn Fn(&TenantName) -> bool,
    source: &str,
) -> Result<Vec<(String, TenantName, String)>, StartError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartError::Config(format!("cannot read {what} {}: {e}", path.display())))?;
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{}:{}", path.display(), number + 1);
        let (name, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let tenant: TenantName = name
            .parse()
            .map_err(|why| StartError::Config(format!("{at}: {why}")))?;
        if !listed(&tenant) {
            return Err(StartError::Config(format!(
                "{at}: the tenant {tenant} is not in {source}"
            )));
        }
        lines.push((at, tenant, rest.trim().to_string()));
    }
    Ok(lines)
}

/// A tenant's own look (`--ui-tenant-dir`), where it has one: what it holds of
/// `<dir>/<tenant>/title`, `brand.css` and `logo.<png|svg|jpg|jpeg|webp>`.
#[derive(Default)]
pub(super) struct TenantLook {
    pub(super) title: Option<String>,
    pub(super) stylesheet: Option<Asset>,
    pub(super) logo: Option<Asset>,
}

fn tenant_look(dir: &std::path::Path, tenant: &TenantName) -> Result<TenantLook, StartError> {
    let folder = dir.join(tenant.as_str());
    let mut look = TenantLook::default();
    if !folder.is_dir() {
        return Ok(look);
    }
    let title = folder.join("title");
    if title.is_file() {
        let text = String::from_utf8(read_look("title", &title)?).map_err(|_| {
            StartError::Config(format!("the title {} is not UTF-8 text", title.display()))
        })?;
        let line = text.lines().next().unwrap_or_default().trim().to_string();
        if line.is_empty() || line.chars().count() > 100 {
            return Err(StartError::Config(format!(
                "the title {} must be one line of 1-100 characters",
                title.display()
            )));
        }
        look.title = Some(line);
    }
    let css = folder.join("brand.css");
    if css.is_file() {
        look.stylesheet = Some(stylesheet_asset(&css)?);
    }
    let logos: Vec<_> = ["png", "svg", "jpg", "jpeg", "webp"]
        .iter()
        .map(|ext| folder.join(format!("logo.{ext}")))
        .filter(|path| path.is_file())
        .collect();
    match logos.as_slice() {
        [] => {}
        [one] => look.logo = Some(logo_asset(one)?),
        _ => {
            return Err(StartError::Config(format!(
                "{} holds more than one logo: keep one",
                folder.display()
            )))
        }
    }
    Ok(look)
}
