//! The operator's commands on the database. `users-service user ...` manages accounts
//! directly through the same core as the API, so the same rules hold (password policy,
//! hashing, the sessions a new password ends, the ids never issued again). Passwords are
//! read from standard input, never from the command line (which `ps` shows). `audit`
//! reads the audit trail; `migrate` and `reseal` work on one pool or on each tenant's.

use std::io::{BufRead, Write};

use serde_json::json;

use crate::config::{
    AccountArg, AdminArgs, DatabaseConfig, EachTenant, SealingConfig, UserCommand,
};
use crate::core::users::{Requester, Users};
use crate::domain::{
    AccountKey, AuditPage, EventQuery, NewAccount, Page, Password, TenantName, User, UserId,
};
use crate::error::{chain, Error};
use crate::http::micro::UserView;
use crate::server::{connect_store, open_core, open_existing_store, StartError};

/// Why a command failed; each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{}", describe(.0))]
    Refused(#[from] Error),
    #[error("cannot read the password from standard input: {0}")]
    Input(std::io::Error),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Reseal(#[from] crate::core::sealing::ResealError),
    /// What failed on one tenant's pool.
    #[error("the tenant {tenant}")]
    Tenant {
        tenant: String,
        #[source]
        source: Box<AdminError>,
    },
}

/// `err`, on the pool of `tenant` if it is a tenant's.
fn in_tenant(err: impl Into<AdminError>, tenant: Option<&TenantName>) -> AdminError {
    match tenant {
        Some(tenant) => AdminError::Tenant {
            tenant: tenant.to_string(),
            source: Box::new(err.into()),
        },
        None => err.into(),
    }
}

/// `users-service migrate`: applies the migrations each pool lacks (the database, or
/// with tenants each tenant's in turn, see [`EachTenant`]), a line each. The first that
/// fails stops it; what was done stays done, and it can be run again.
pub async fn migrate(database: &DatabaseConfig, each: &EachTenant) -> Result<(), AdminError> {
    if database.no_migrate {
        return Err(AdminError::Config(
            "`migrate` with --no-migrate (or USERS_NO_MIGRATE) would do nothing".into(),
        ));
    }
    for database in each.pools(database).map_err(AdminError::Config)? {
        let tenant = database.tenant.as_ref();
        let store = connect_store(&database, true)
            .await
            .map_err(|err| in_tenant(err, tenant))?;
        let was_current = store.check_schema().await.is_ok();
        let migrated = store.migrate().await.map_err(StartError::Migrate);
        store.close().await;
        migrated.map_err(|err| in_tenant(err, tenant))?;
        let outcome = if was_current {
            "the database schema is up to date; nothing to do"
        } else {
            "migrations applied; the database schema is up to date"
        };
        tracing::info!(
            database = %database.url,
            tenant = tenant.map(tracing::field::display),
            "{outcome}"
        );
    }
    Ok(())
}

/// `users-service reseal`: seals every stored TOTP secret under the first of
/// `sealing`'s keys, in each pool as [`migrate`] goes through them, a line each.
pub async fn reseal(
    database: &DatabaseConfig,
    each: &EachTenant,
    sealing: &SealingConfig,
) -> Result<(), AdminError> {
    let keys = sealing.keys().map_err(AdminError::Config)?;
    for database in each.pools(database).map_err(AdminError::Config)? {
        let tenant = database.tenant.as_ref();
        let store = open_existing_store(&database)
            .await
            .map_err(|err| in_tenant(err, tenant))?;
        let result = crate::core::sealing::reseal(&store, &keys).await;
        store.close().await;
        let done = result.map_err(|err| in_tenant(err, tenant))?;
        tracing::info!(
            tenant = tenant.map(tracing::field::display),
            key = %keys.current().unwrap_or_default(),
            sealed = done.sealed,
            unchanged = done.unchanged,
            changed_meanwhile = done.skipped,
            "reseal done"
        );
    }
    Ok(())
}

fn describe(err: &Error) -> String {
    match err {
        Error::Internal(cause) => format!("internal error: {}", chain(cause.as_ref())),
        other => other.to_string(),
    }
}

/// Runs `command`, reading a password from `input` when it needs one and writing its
/// result to `out`.
pub async fn run(
    command: UserCommand,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let common = common_of(&command).clone();
    let (users, store) = open_core(&common.database, &common.passwords).await?;
    let result = execute(&users, command, input, out).await;
    store.close().await;
    result
}

fn common_of(command: &UserCommand) -> &AdminArgs {
    match command {
        UserCommand::Create { common, .. }
        | UserCommand::Get { common, .. }
        | UserCommand::List { common, .. }
        | UserCommand::Delete { common, .. }
        | UserCommand::SetPassword { common, .. }
        | UserCommand::Unlock { common, .. }
        | UserCommand::EndSessions { common, .. } => common,
    }
}

async fn execute(
    users: &Users,
    command: UserCommand,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    match command {
        UserCommand::Create {
            username,
            email,
            id,
            common,
        } => {
            let password = read_password(input)?;
            let account = NewAccount::parse(id, Some(username), Some(email), Some(password), None)?;
            let user = users.create(account, operator()).await?;
            show_user(out, common.json, user)
        }
        UserCommand::Get { account, common } => {
            let user = find(users, account).await?;
            show_user(out, common.json, user)
        }
        UserCommand::List {
            limit,
            offset,
            common,
        } => {
            let page = Page::parse(Some(limit), Some(offset))?;
            let found = users.list(page).await?;
            if common.json {
                let views: Vec<UserView> = found.into_iter().map(UserView::from).collect();
                writeln!(out, "{}", json!({ "users": views }))?;
            } else {
                for user in found {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}",
                        user.id,
                        user.username,
                        user.email,
                        if user.verified {
                            "verified"
                        } else {
                            "unverified"
                        }
                    )?;
                }
            }
            Ok(())
        }
        UserCommand::Delete { account, common } => {
            let user = find(users, account).await?;
            users.delete(&id_of(&user)?, &operator()).await?;
            done(out, common.json, &user.id, "deleted")
        }
        UserCommand::SetPassword { account, common } => {
            let user = find(users, account).await?;
            let password = Password::new_password("password", Some(read_password(input)?))?;
            users
                .set_password(&id_of(&user)?, password, &operator())
                .await?;
            done(out, common.json, &user.id, "password_set")
        }
        UserCommand::Unlock { account, common } => {
            let user = find(users, account).await?;
            users.unlock(&id_of(&user)?, &operator()).await?;
            done(out, common.json, &user.id, "unlocked")
        }
        UserCommand::EndSessions { account, common } => {
            let user = find(users, account).await?;
            users.logout_all(&id_of(&user)?, None, &operator()).await?;
            done(out, common.json, &user.id, "sessions_ended")
        }
    }
}

/// The operator, as the core sees it: trusted with everything, from no address.
fn operator() -> Requester {
    Requester {
        ip: None,
        trusted: true,
        session_user: None,
        session: None,
        user_agent: None,
        request_id: None,
        admin: true,
    }
}

async fn find(users: &Users, account: AccountArg) -> Result<User, Error> {
    let key = AccountKey::parse(account.id, account.username, account.email)?;
    users.read(&key).await
}

/// A stored account's id (as stored, it is a valid one).
fn id_of(user: &User) -> Result<UserId, Error> {
    UserId::parse("id", Some(user.id.clone()))
}

/// The first line of `input`, without its line ending.
fn read_password(input: &mut impl BufRead) -> Result<String, AdminError> {
    let mut line = String::new();
    input.read_line(&mut line).map_err(AdminError::Input)?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    Ok(password.to_owned())
}

fn show_user(out: &mut impl Write, json: bool, user: User) -> Result<(), AdminError> {
    if json {
        writeln!(out, "{}", json!({ "user": UserView::from(user) }))?;
        return Ok(());
    }
    writeln!(out, "id:        {}", user.id)?;
    writeln!(out, "username:  {}", user.username)?;
    writeln!(out, "email:     {}", user.email)?;
    writeln!(out, "verified:  {}", user.verified)?;
    writeln!(out, "created:   {}", user.created)?;
    writeln!(out, "updated:   {}", user.updated)?;
    for (key, value) in user.profile.into_map() {
        writeln!(out, "profile.{key}: {value}")?;
    }
    Ok(())
}

fn done(out: &mut impl Write, json: bool, id: &str, outcome: &str) -> Result<(), AdminError> {
    if json {
        writeln!(out, "{}", json!({ "user_id": id, "outcome": outcome }))?;
    } else {
        writeln!(out, "{outcome}: {id}")?;
    }
    Ok(())
}

/// What `users-service audit` was asked for.
pub struct AuditArgs {
    pub user_id: Option<String>,
    pub kind: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub before: Option<i64>,
    pub limit: i64,
    pub json: bool,
}

/// `users-service audit`: a page of the audit trail, newest first; the next page's
/// `--before` ends the text output, or is the JSON's `next`.
pub async fn audit(
    database: &crate::config::DatabaseConfig,
    args: AuditArgs,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let query = EventQuery::parse(
        args.user_id,
        args.kind,
        args.since,
        args.until,
        args.before,
        Some(args.limit),
    )?;
    let store = crate::server::open_existing_store(database).await?;
    let events = crate::store::AuditStore::events(&store, &query).await;
    store.close().await;
    let page = AuditPage::of(events.map_err(Error::internal)?, &query);
    let next = page.next;
    if args.json {
        let page = crate::http::AuditEventsResponse::from(page);
        writeln!(out, "{}", json!(page))?;
        return Ok(());
    }
    for e in &page.events {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\tuser={}\tclient={}\trequest={}",
            e.id,
            e.at,
            e.kind,
            e.outcome,
            e.actor,
            e.user_id.as_deref().unwrap_or("-"),
            e.client_ip.as_deref().unwrap_or("-"),
            e.request_id.as_deref().unwrap_or("-"),
        )?;
    }
    if let Some(next) = next {
        writeln!(out, "# more: --before {next}")?;
    }
    Ok(())
}
