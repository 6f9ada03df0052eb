//! The RPC methods, independent of the wire surface: each one's request body and how it
//! calls the core. Both surfaces (Micro `users` and M3O's User API) decode the same
//! requests and differ only in how they write the answer (see `micro` and `m3o`).
//!
//! Requests accept each field in snake_case and in lowerCamelCase, as the Micro gateway
//! and protobuf JSON did, and ignore unknown fields. Every field is optional on the wire
//! so that a missing one is reported by the domain parser as "<field> is required"
//! rather than as a JSON error.

use std::collections::BTreeMap;
use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::json::int_or_string;
use super::{MAX_BODY_BYTES, PROFILE_BODY_BYTES};
use crate::core::totp::Enrolment;
use crate::core::users::{
    passkey_name, Ceremony, DisableProof, PasskeyInfo, PasskeySignInFor, Requester, SecondFactors,
    TokenCheck, Users,
};
use crate::domain::{
    reset_expiration, AccountChanges, AccountKey, Email, LoginName, MagicLinkTarget, MailText,
    NewAccount, Page, Password, PasswordChange, PasswordReset, RedirectUrl, Session, User, UserId,
    UserQuery,
};
use crate::domain::{AuditPage, EventQuery};
use crate::domain::{RecoveryCode, SecondStep, SecretToken, SessionHandle, TotpCode};
use crate::error::Error;
use crate::store::SessionDetails;

/// One RPC method: its name in the routes, its request and what the core answers.
pub trait RpcMethod: Send + Sync + 'static {
    const NAME: &'static str;
    /// Largest request body accepted, in bytes.
    const MAX_BODY: usize = MAX_BODY_BYTES;
    type Request: DeserializeOwned + Send;
    type Output: Send;

    /// `caller` says who calls: its address, for the limits that count per address,
    /// and whether it is trusted.
    fn call(
        users: &Users,
        request: Self::Request,
        caller: Requester,
    ) -> impl Future<Output = Result<Self::Output, Error>> + Send;
}

type Profile = Option<BTreeMap<String, String>>;

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct CreateRequest {
    id: Option<String>,
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
    /// With the admin key: another system's hash of the password, instead of it.
    password_hash: Option<String>,
    profile: Profile,
}

/// An account named by id, username or e-mail (Read).
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct AccountRequest {
    id: Option<String>,
    username: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct IdRequest {
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct UserIdRequest {
    #[serde(alias = "userId")]
    user_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct LogoutAllRequest {
    #[serde(alias = "userId")]
    user_id: Option<String>,
    /// Keeps the session that signs the request.
    #[serde(alias = "keepCurrent")]
    keep_current: Option<bool>,
}

/// One of a user's sessions, named by the handle ListSessions gives.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct RevokeSessionRequest {
    #[serde(alias = "userId")]
    user_id: Option<String>,
    session: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct UpdateRequest {
    id: Option<String>,
    username: Option<String>,
    email: Option<String>,
    profile: Profile,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct SearchRequest {
    username: Option<String>,
    email: Option<String>,
    #[serde(default, deserialize_with = "int_or_string")]
    limit: Option<i64>,
    #[serde(default, deserialize_with = "int_or_string")]
    offset: Option<i64>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct ListRequest {
    #[serde(default, deserialize_with = "int_or_string")]
    limit: Option<i64>,
    #[serde(default, deserialize_with = "int_or_string")]
    offset: Option<i64>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct ListAuditEventsRequest {
    #[serde(alias = "userId")]
    user_id: Option<String>,
    kind: Option<String>,
    #[serde(default, deserialize_with = "int_or_string")]
    since: Option<i64>,
    #[serde(default, deserialize_with = "int_or_string")]
    until: Option<i64>,
    /// The `next` of the previous page.
    #[serde(default, deserialize_with = "int_or_string")]
    before: Option<i64>,
    #[serde(default, deserialize_with = "int_or_string")]
    limit: Option<i64>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct UpdatePasswordRequest {
    #[serde(alias = "userId")]
    user_id: Option<String>,
    #[serde(alias = "oldPassword")]
    old_password: Option<String>,
    #[serde(alias = "newPassword")]
    new_password: Option<String>,
    #[serde(alias = "confirmPassword")]
    confirm_password: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct LoginRequest {
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct SessionRequest {
    #[serde(alias = "sessionId")]
    session_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct TokenRequest {
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct SendVerificationEmailRequest {
    email: Option<String>,
    subject: Option<String>,
    #[serde(alias = "textContent")]
    text_content: Option<String>,
    #[serde(alias = "redirectUrl")]
    redirect_url: Option<String>,
    #[serde(alias = "failureRedirectUrl")]
    failure_redirect_url: Option<String>,
    #[serde(alias = "fromName")]
    from_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct SendPasswordResetEmailRequest {
    email: Option<String>,
    subject: Option<String>,
    #[serde(alias = "textContent")]
    text_content: Option<String>,
    #[serde(alias = "fromName")]
    from_name: Option<String>,
    #[serde(default, deserialize_with = "int_or_string")]
    expiration: Option<i64>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct ResetPasswordRequest {
    email: Option<String>,
    code: Option<String>,
    #[serde(alias = "newPassword")]
    new_password: Option<String>,
    #[serde(alias = "confirmPassword")]
    confirm_password: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct SendMagicLinkRequest {
    email: Option<String>,
    subject: Option<String>,
    #[serde(alias = "textContent")]
    text_content: Option<String>,
    #[serde(alias = "fromName")]
    from_name: Option<String>,
    address: Option<String>,
    endpoint: Option<String>,
}

/// The second step of a sign-in.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct LoginMfaRequest {
    #[serde(alias = "challengeId")]
    challenge_id: Option<String>,
    code: Option<String>,
    #[serde(alias = "recoveryCode")]
    recovery_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct EmptyRequest {}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct CodeRequest {
    code: Option<String>,
}

/// Turning TOTP off: a code, a recovery code or the password.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct DisableTotpRequest {
    #[serde(alias = "userId")]
    user_id: Option<String>,
    code: Option<String>,
    #[serde(alias = "recoveryCode")]
    recovery_code: Option<String>,
    password: Option<String>,
}

/// The second step of a passkey ceremony: the browser's credential, as JSON.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct PasskeyCredentialRequest {
    #[serde(alias = "challengeId")]
    challenge_id: Option<String>,
    credential: Option<serde_json::Value>,
    name: Option<String>,
}

/// A passkey sign-in's first step: nothing (any account's passkey), a name (that
/// account's passkeys), or the challenge of a sign-in's second step.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct PasskeyLoginRequest {
    username: Option<String>,
    email: Option<String>,
    #[serde(alias = "challengeId")]
    challenge_id: Option<String>,
}

/// One of a user's passkeys, by its id.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct PasskeyRequest {
    #[serde(alias = "userId")]
    user_id: Option<String>,
    passkey: Option<String>,
    name: Option<String>,
}

fn credential(raw: Option<serde_json::Value>) -> Result<serde_json::Value, Error> {
    raw.filter(|v| v.is_object()).ok_or_else(|| {
        Error::invalid(
            "credential",
            "is required: the object navigator.credentials answered",
        )
    })
}

fn passkey_id(raw: Option<String>) -> Result<String, Error> {
    crate::domain::required("passkey", raw)
}

/// Declares a method: its marker type, request, output and body.
macro_rules! method {
    ($name:ident($request:ty) -> $output:ty, |$users:ident, $r:ident, $caller:ident| $body:expr) => {
        method!($name($request) -> $output, max_body = MAX_BODY_BYTES, |$users, $r, $caller| $body);
    };
    ($name:ident($request:ty) -> $output:ty, max_body = $max:expr, |$users:ident, $r:ident, $caller:ident| $body:expr) => {
        pub struct $name;

        impl RpcMethod for $name {
            const NAME: &'static str = stringify!($name);
            const MAX_BODY: usize = $max;
            type Request = $request;
            type Output = $output;

            #[allow(unused_variables)]
            async fn call(
                $users: &Users,
                $r: $request,
                $caller: Requester,
            ) -> Result<$output, Error> {
                $body
            }
        }
    };
}

// Create and Update carry profiles: up to 64 values of 4 KiB each need a larger body.
method!(Create(CreateRequest) -> User, max_body = PROFILE_BODY_BYTES, |users, r, caller| {
    let account =
        NewAccount::parse_moving_in(r.id, r.username, r.email, r.password, r.password_hash, r.profile)?;
    users.create(account, caller).await
});

method!(Read(AccountRequest) -> User, |users, r, caller| {
    let key = AccountKey::parse(r.id, r.username, r.email)?;
    if let AccountKey::Id(id) = &key {
        caller.may_act_on(id.as_str())?;
    }
    let user = users.read(&key).await?;
    caller.may_act_on(&user.id)?;
    Ok(user)
});

method!(Update(UpdateRequest) -> User, max_body = PROFILE_BODY_BYTES, |users, r, caller| {
    let id = UserId::parse("id", r.id)?;
    caller.may_act_on(id.as_str())?;
    let changes = AccountChanges::parse(r.username, r.email, r.profile)?;
    users.update(&id, changes, &caller).await
});

method!(Delete(IdRequest) -> (), |users, r, caller| {
    let id = UserId::parse("id", r.id)?;
    caller.may_act_on(id.as_str())?;
    users.delete(&id, &caller).await
});

method!(Search(SearchRequest) -> Vec<User>, |users, r, caller| {
    users.search(&UserQuery::parse(r.username, r.email, r.limit, r.offset)?).await
});

method!(List(ListRequest) -> Vec<User>, |users, r, caller| {
    users.list(Page::parse(r.limit, r.offset)?).await
});

method!(UpdatePassword(UpdatePasswordRequest) -> (), |users, r, caller| {
    let change =
        PasswordChange::parse(r.user_id, r.old_password, r.new_password, r.confirm_password)?;
    caller.may_act_on(change.user_id.as_str())?;
    users.update_password(change, &caller).await
});

method!(Login(LoginRequest) -> Session, |users, r, caller| {
    let name = LoginName::parse(r.username, r.email)?;
    let password = Password::candidate("password", r.password)?;
    users.login(name, password, &caller).await
});

method!(Logout(SessionRequest) -> (), |users, r, caller| {
    users
        .logout(&SecretToken::parse("session_id", r.session_id)?, &caller)
        .await
});

method!(LogoutAll(LogoutAllRequest) -> (), |users, r, caller| {
    let id = caller.account_or_own(r.user_id, "user_id")?;
    let keep = match (r.keep_current.unwrap_or(false), &caller.session) {
        (false, _) => None,
        (true, Some(current)) => Some(current),
        (true, None) => {
            return Err(Error::invalid(
                "keep_current",
                "needs the request to be signed by the session to keep",
            ))
        }
    };
    users.logout_all(&id, keep, &caller).await
});

method!(ListAuditEvents(ListAuditEventsRequest) -> AuditPage, |users, r, caller| {
    users.audit_events(&audit_query(r)?).await
});

/// A page of the audit trail, from what ListAuditEvents was sent.
fn audit_query(r: ListAuditEventsRequest) -> Result<EventQuery, Error> {
    EventQuery::parse(r.user_id, r.kind, r.since, r.until, r.before, r.limit)
}

method!(ListSessions(UserIdRequest) -> Vec<SessionDetails>, |users, r, caller| {
    users.list_sessions(&caller.account_or_own(r.user_id, "user_id")?).await
});

method!(RevokeSession(RevokeSessionRequest) -> (), |users, r, caller| {
    let id = caller.account_or_own(r.user_id, "user_id")?;
    users
        .revoke_session(&id, &SessionHandle::parse("session", r.session)?, &caller)
        .await
});

method!(ReadSession(SessionRequest) -> Session, |users, r, caller| {
    users.read_session(SecretToken::parse("session_id", r.session_id)?).await
});

method!(SendVerificationEmail(SendVerificationEmailRequest) -> (), |users, r, caller| {
    let email = Email::parse(r.email)?;
    let text = MailText::parse(r.subject, r.text_content, r.from_name)?;
    let redirect = RedirectUrl::parse("redirect_url", r.redirect_url)?;
    let failure = RedirectUrl::parse("failure_redirect_url", r.failure_redirect_url)?;
    users.send_verification_email(email, text, redirect, failure).await
});

method!(VerifyEmail(TokenRequest) -> (), |users, r, caller| {
    users
        .verify_email(SecretToken::parse("token", r.token)?, &caller)
        .await
});

method!(SendPasswordResetEmail(SendPasswordResetEmailRequest) -> (), |users, r, caller| {
    let email = Email::parse(r.email)?;
    let text = MailText::parse(r.subject, r.text_content, r.from_name)?;
    let expiration = reset_expiration(r.expiration)?;
    users.send_password_reset_email(email, text, expiration).await
});

method!(ResetPassword(ResetPasswordRequest) -> (), |users, r, caller| {
    let reset = PasswordReset::parse(r.email, r.code, r.new_password, r.confirm_password)?;
    users.reset_password(reset, &caller).await
});

method!(SendMagicLink(SendMagicLinkRequest) -> (), |users, r, caller| {
    let email = Email::parse(r.email)?;
    let text = MailText::parse(r.subject, r.text_content, r.from_name)?;
    let target = MagicLinkTarget::parse(r.address, r.endpoint)?;
    users.send_magic_link(email, text, target).await
});

method!(VerifyToken(TokenRequest) -> TokenCheck, |users, r, caller| {
    users.verify_token(SecretToken::parse("token", r.token)?, &caller).await
});

method!(LoginMfa(LoginMfaRequest) -> Session, |users, r, caller| {
    let challenge = SecretToken::parse("challenge_id", r.challenge_id)?;
    let step = SecondStep::parse(r.code, r.recovery_code)?;
    users.login_mfa(challenge, step, &caller).await
});

method!(ReadSecondFactors(UserIdRequest) -> SecondFactors, |users, r, caller| {
    users.second_factors(&caller.account_or_own(r.user_id, "user_id")?).await
});

method!(StartTotp(EmptyRequest) -> Enrolment, |users, r, caller| {
    users.start_totp(&caller).await
});

method!(ConfirmTotp(CodeRequest) -> Vec<RecoveryCode>, |users, r, caller| {
    users.confirm_totp(TotpCode::parse("code", r.code)?, &caller).await
});

method!(DisableTotp(DisableTotpRequest) -> (), |users, r, caller| {
    let id = caller.account_or_own(r.user_id, "user_id")?;
    let proof = match r.password.filter(|p| !p.is_empty()) {
        Some(password) if r.code.is_none() && r.recovery_code.is_none() => {
            DisableProof::Password(Password::candidate("password", Some(password))?)
        }
        Some(_) => {
            return Err(Error::invalid(
                "password",
                "cannot be given with a code; send one or the other",
            ))
        }
        None => DisableProof::Code(SecondStep::parse(r.code, r.recovery_code).map_err(|_| {
            Error::invalid("code", "is required (or a recovery_code, or the password)")
        })?),
    };
    users.disable_totp(&id, proof, &caller).await
});

method!(ResetSecondFactors(UserIdRequest) -> (), |users, r, caller| {
    users
        .reset_second_factors(&UserId::parse("user_id", r.user_id)?, &caller)
        .await
});

method!(StartPasskeyRegistration(EmptyRequest) -> Ceremony, |users, r, caller| {
    users.start_passkey_registration(&caller).await
});

method!(FinishPasskeyRegistration(PasskeyCredentialRequest) -> PasskeyInfo, |users, r, caller| {
    let challenge = SecretToken::parse("challenge_id", r.challenge_id)?;
    let name = passkey_name(r.name)?;
    users
        .finish_passkey_registration(challenge, credential(r.credential)?, name, &caller)
        .await
});

method!(StartPasskeyLogin(PasskeyLoginRequest) -> Ceremony, |users, r, caller| {
    use crate::domain::optional;
    let by = match (optional(r.challenge_id), optional(r.username), optional(r.email)) {
        (Some(challenge), ..) => {
            PasskeySignInFor::SecondStep(SecretToken::parse("challenge_id", Some(challenge))?)
        }
        (None, None, None) => PasskeySignInFor::AnyAccount,
        (None, username, email) => PasskeySignInFor::Name(LoginName::parse(username, email)?),
    };
    users.start_passkey_sign_in(by, &caller).await
});

method!(FinishPasskeyLogin(PasskeyCredentialRequest) -> Session, |users, r, caller| {
    let challenge = SecretToken::parse("challenge_id", r.challenge_id)?;
    users
        .finish_passkey_sign_in(challenge, credential(r.credential)?, &caller)
        .await
});

method!(ListPasskeys(UserIdRequest) -> Vec<PasskeyInfo>, |users, r, caller| {
    users.list_passkeys(&caller.account_or_own(r.user_id, "user_id")?).await
});

method!(RenamePasskey(PasskeyRequest) -> (), |users, r, caller| {
    let id = caller.account_or_own(r.user_id, "user_id")?;
    let name = passkey_name(Some(crate::domain::required("name", r.name)?))?;
    users.rename_passkey(&id, &passkey_id(r.passkey)?, name).await
});

method!(DeletePasskey(PasskeyRequest) -> (), |users, r, caller| {
    let id = caller.account_or_own(r.user_id, "user_id")?;
    users
        .delete_passkey(&id, &passkey_id(r.passkey)?, &caller)
        .await
});
