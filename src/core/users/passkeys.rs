//! Passkeys (WebAuthn, by `webauthn-rs`): registering them with one's own session,
//! signing in with one (without a password, or as the second step of a sign-in), and
//! listing, naming and deleting them.
//!
//! A ceremony has two steps, which any replica may answer: its state is kept in the
//! database under a one-time secret (the `challenge_id` the client carries between
//! them), and the second step uses it up in the same transaction as its effect. A
//! registration, or a sign-in's second step, is a token of its account's (one at a
//! time). A sign-in without a password is a ceremony of its own, for a name or for any
//! account (a discoverable passkey names its account): anyone may start one, so
//! starting one withdraws no other, and each counts against the client address's hourly
//! limit. A sign-in by name answers alike whether or not the name has passkeys: for one
//! without, it lists decoy credentials made from the name and a key of the service's,
//! the same on every ask, and its ceremony opens no session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use webauthn_rs::prelude::{
    AuthenticationResult, DiscoverableAuthentication, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid, Webauthn,
    WebauthnBuilder,
};

use super::second_factor::{NEEDS_OWN_SESSION, NO_CHALLENGE};
use super::*;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::domain::SecondFactor;
use crate::store::{FactorUse, NewPasskeySignIn, StoredPasskey};

/// Why passkeys are off, after the word "passkeys".
pub const PASSKEYS_OFF: &str =
    "need --public-url to name this service by a domain name (such as https://accounts.example.com, or http://localhost:8080 to try it)";
pub const NO_CEREMONY: &str = "challenge not found or expired: start again";
pub const PASSKEY_REFUSED: &str = "the passkey was not accepted";
pub const NO_PASSKEY: &str = "passkey not found";
pub const NO_PASSKEYS_FOR_NAME: &str = "no passkey is registered for this account";
pub const PASSKEY_TAKEN: &str = "this passkey is registered already";
/// Longest name of a passkey, in characters.
pub const PASSKEY_NAME_MAX: usize = 64;
/// The state stored for a sign-in by a name without passkeys: a ceremony that no
/// passkey finishes.
const DECOY_STATE: &str = "decoy";
/// The name of the key decoys are made with, in the store's service keys.
const DECOY_KEY: &str = "passkey_decoys";
/// The lengths of the credential ids common authenticators make, one of which a decoy's
/// has (16 bytes: Google Password Manager and most security keys' discoverable
/// credentials; 20: iCloud Keychain; 32: Windows Hello; 64: security keys' others).
const DECOY_ID_LENGTHS: [usize; 4] = [16, 20, 32, 64];

/// The key that makes the decoy credential of a name without passkeys: 32 random
/// bytes, made by the first replica that needs it and kept in the store.
pub(super) struct DecoyKey(Hmac<Sha256>);

impl std::fmt::Debug for DecoyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecoyKey(..)")
    }
}

/// Whether `value` may be imported as the service's key `name`: the passkey decoys'
/// key, 32 bytes in base64url, is the only key the service makes.
pub fn check_service_key(name: &str, value: &str) -> Result<(), String> {
    if name != DECOY_KEY {
        return Err(format!(
            "service key {name:?} is not one this service makes"
        ));
    }
    match URL_SAFE_NO_PAD.decode(value) {
        Ok(bytes) if bytes.len() == 32 => Ok(()),
        // The value is a secret: the problem does not repeat it.
        _ => Err(format!(
            "service key {name:?} must be 32 bytes in base64url"
        )),
    }
}

impl DecoyKey {
    fn new(stored: &str) -> Result<Self, Error> {
        let bytes = URL_SAFE_NO_PAD
            .decode(stored)
            .map_err(|e| Error::internal(format!("the passkey decoys' key: {e}")))?;
        Hmac::new_from_slice(&bytes)
            .map(Self)
            .map_err(|e| Error::internal(format!("the passkey decoys' key: {e}")))
    }

    /// The decoy credential ids of `name`: one, or for about one name in four two, as
    /// an account may hold a passkey on two devices. Their number, bytes and lengths
    /// follow from the name and the key alone, so every ask, on every replica, gets the
    /// same ones.
    fn credential_ids(&self, name: &LoginName) -> Vec<Vec<u8>> {
        let (kind, name) = match name {
            LoginName::Username(username) => ("username", username.as_str()),
            LoginName::Email(email) => ("email", email.as_str()),
        };
        let block = |credential: u8, counter: u8| {
            let mut mac = self.0.clone();
            mac.update(b"passkey-decoy\n");
            mac.update(kind.as_bytes());
            mac.update(b"\n");
            mac.update(name.as_bytes());
            mac.update(&[0, credential, counter]);
            mac.finalize().into_bytes()
        };
        let count = if block(0, 0)[0] < 64 { 2 } else { 1 };
        (1..=count)
            .map(|credential| {
                let first = block(credential, 0);
                let length = DECOY_ID_LENGTHS[usize::from(first[0]) % DECOY_ID_LENGTHS.len()];
                let mut id: Vec<u8> = first[1..].to_vec();
                let mut counter = 1;
                while id.len() < length {
                    id.extend_from_slice(&block(credential, counter));
                    counter += 1;
                }
                id.truncate(length);
                id
            })
            .collect()
    }
}

/// What the relying party is: the service's public address and name, and the other
/// origins (`--cors-origins`) whose pages may use its passkeys.
#[derive(Debug, Clone, Default)]
pub struct PasskeySettings {
    pub name: String,
    pub origins: Vec<String>,
}

/// Builds the relying party from the public address (its host is the RP id); None,
/// with the reason, when that cannot name one (an IP address, say).
pub fn relying_party(public_url: &str, settings: &PasskeySettings) -> Result<Webauthn, String> {
    let origin = Url::parse(public_url).map_err(|e| e.to_string())?;
    let Some(url::Host::Domain(rp_id)) = origin.host() else {
        return Err(PASSKEYS_OFF.to_string());
    };
    // (Other failures read "passkeys are off: they <webauthn-rs's reason>".)
    let rp_id = rp_id.to_string();
    let mut builder = WebauthnBuilder::new(&rp_id, &origin)
        .map_err(|e| e.to_string())?
        .rp_name(&settings.name);
    let extra: Vec<Url> = settings
        .origins
        .iter()
        .filter_map(|o| Url::parse(o).ok())
        .collect();
    for origin in &extra {
        builder = builder.append_allowed_origin(origin);
    }
    builder.build().map_err(|e| e.to_string())
}

/// A ceremony's first step: the options for `navigator.credentials`, and the challenge
/// id that names the ceremony in the second step.
#[derive(Debug)]
pub struct Ceremony {
    pub challenge: SecretToken,
    pub expires: i64,
    /// `{"publicKey": {...}}`, as the browser's `navigator.credentials` takes it (with
    /// the binary values in base64url).
    pub options: serde_json::Value,
}

/// Whom a passkey sign-in is for.
#[derive(Debug)]
pub enum PasskeySignInFor {
    /// A sign-in without a password or a name: the passkey the browser offers (a
    /// discoverable one, which carries its account's user handle) names the account. The
    /// answer is the same whoever asks, so it tells nothing of any account.
    AnyAccount,
    /// A sign-in without a password, by username or e-mail: the account's passkeys are
    /// offered; for a name without passkeys (an unknown name included), a decoy.
    Name(LoginName),
    /// The second step of a sign-in that asked for one (its challenge).
    SecondStep(SecretToken),
}

/// A passkey as its user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyInfo {
    pub id: String,
    pub name: String,
    pub created: i64,
    pub last_used: Option<i64>,
}

impl From<StoredPasskey> for PasskeyInfo {
    fn from(p: StoredPasskey) -> Self {
        Self {
            id: p.credential_id,
            name: p.name,
            created: p.created,
            last_used: p.last_used,
        }
    }
}

/// A passkey's name: 1-64 characters, no control characters.
pub fn passkey_name(raw: Option<String>) -> Result<String, Error> {
    let name = raw.unwrap_or_default().trim().to_string();
    if name.is_empty() {
        return Ok("Passkey".to_string());
    }
    if name.chars().count() > PASSKEY_NAME_MAX || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            format!("must be 1-{PASSKEY_NAME_MAX} characters, without control characters"),
        ));
    }
    Ok(name)
}

fn credential_id(passkey: &Passkey) -> String {
    URL_SAFE_NO_PAD.encode(passkey.cred_id())
}

/// The WebAuthn user handle of an account: stable, and revealing nothing of its id.
fn user_handle(user_id: &str) -> Uuid {
    let digest = Sha256::digest(format!("passkey-user\n{user_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// The options of a sign-in by name with its credentials' transports left out: a
/// decoy has none to show, so that a real credential whose client reported them at
/// registration is listed as a decoy is. (They are hints; the browser finds the
/// authenticator without them.)
fn without_transports(options: &mut serde_json::Value) {
    let listed = options
        .pointer_mut("/publicKey/allowCredentials")
        .and_then(serde_json::Value::as_array_mut);
    for credential in listed.into_iter().flatten() {
        if let Some(credential) = credential.as_object_mut() {
            credential.remove("transports");
        }
    }
}

fn options_json(options: impl serde::Serialize) -> Result<serde_json::Value, Error> {
    serde_json::to_value(options).map_err(Error::internal)
}

fn state_json(state: &impl serde::Serialize) -> Result<String, Error> {
    serde_json::to_string(state).map_err(Error::internal)
}

fn parse_credential<T: serde::de::DeserializeOwned>(raw: serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(raw).map_err(|e| {
        Error::invalid(
            "credential",
            format!("is not the credential the browser returned: {e}"),
        )
    })
}

impl Users {
    fn webauthn(&self) -> Result<&Webauthn, Error> {
        self.webauthn
            .as_ref()
            .ok_or_else(|| Error::invalid("passkeys", PASSKEYS_OFF))
    }

    /// A ceremony's token with its state, stored for the second step.
    async fn store_ceremony(
        &self,
        user_id: &str,
        purpose: Purpose,
        state: &str,
        options: serde_json::Value,
    ) -> Result<Ceremony, Error> {
        let (challenge, expires) = self
            .short_lived_token(user_id, purpose, Some(state))
            .await?;
        Ok(Ceremony {
            challenge,
            expires,
            options,
        })
    }

    /// Starts adding a passkey to the caller's own account.
    pub async fn start_passkey_registration(&self, caller: &Requester) -> Result<Ceremony, Error> {
        let webauthn = self.webauthn()?;
        let id = caller
            .session_user
            .clone()
            .ok_or(Error::Forbidden(NEEDS_OWN_SESSION))?;
        let user = self
            .read(&AccountKey::Id(UserId::parse("session", Some(id))?))
            .await?;
        let existing = self.passkeys_of(&user.id).await?;
        let exclude = existing.iter().map(|p| p.cred_id().clone()).collect();
        let (options, state) = webauthn
            .start_passkey_registration(
                user_handle(&user.id),
                &user.email,
                &user.username,
                Some(exclude),
            )
            .map_err(|e| Error::internal(e.to_string()))?;
        let mut options = options_json(options)?;
        // webauthn-rs asks for a credential that is not discoverable. A discoverable
        // one (which platform authenticators make anyway) can sign in without a name:
        // asked for where the authenticator can store one, and checked the same way.
        let selection = options.pointer_mut("/publicKey/authenticatorSelection");
        if let Some(selection) = selection.and_then(serde_json::Value::as_object_mut) {
            selection.insert("residentKey".into(), "preferred".into());
        }
        self.store_ceremony(
            &user.id,
            Purpose::PasskeyRegistration,
            &state_json(&state)?,
            options,
        )
        .await
    }

    /// Finishes adding a passkey: the browser's new credential for the ceremony.
    pub async fn finish_passkey_registration(
        &self,
        challenge: SecretToken,
        credential: serde_json::Value,
        name: String,
        caller: &Requester,
    ) -> Result<PasskeyInfo, Error> {
        let webauthn = self.webauthn()?;
        let own = caller
            .session_user
            .as_deref()
            .ok_or(Error::Forbidden(NEEDS_OWN_SESSION))?;
        let credential: RegisterPublicKeyCredential = parse_credential(credential)?;
        let digest = challenge.digest();
        let now = self.clock.now();
        let token = self
            .store
            .live_token(&digest, now)
            .await?
            .filter(|t| t.purpose == Purpose::PasskeyRegistration.as_str() && t.user_id == own)
            .ok_or(Error::Unauthorized(NO_CEREMONY))?;
        let state: PasskeyRegistration =
            serde_json::from_str(token.state.as_deref().unwrap_or_default())
                .map_err(Error::internal)?;
        let passkey = webauthn
            .finish_passkey_registration(&credential, &state)
            .map_err(|e| {
                tracing::warn!(event = "passkey_registration_refused", user_id = %own, reason = %e);
                Error::Unauthorized(PASSKEY_REFUSED)
            })?;
        let stored = StoredPasskey {
            credential_id: credential_id(&passkey),
            user_id: own.to_string(),
            name,
            passkey: state_json(&passkey)?,
            counter: 0,
            created: now,
            last_used: None,
        };
        match self
            .store
            .redeem_token(
                &digest,
                Purpose::PasskeyRegistration,
                &caller.audit(now),
                Redemption::AddPasskey { passkey: &stored },
            )
            .await?
        {
            Redeemed::Done { .. } => {
                tracing::info!(event = "passkey_added", user_id = %own);
                Ok(stored.into())
            }
            Redeemed::FactorRefused => Err(Error::invalid("credential", PASSKEY_TAKEN)),
            _ => Err(Error::Unauthorized(NO_CEREMONY)),
        }
    }

    async fn passkeys_of(&self, user_id: &str) -> Result<Vec<Passkey>, Error> {
        self.store
            .passkeys(user_id)
            .await?
            .iter()
            .map(|p| serde_json::from_str(&p.passkey).map_err(Error::internal))
            .collect()
    }

    /// Starts a sign-in with a passkey: without a password, for any account or for a
    /// name; or as the second step of a sign-in, on its challenge (which then names this
    /// ceremony too). A sign-in without a password counts against the client address's
    /// hourly limit, and is a ceremony of its own: starting one withdraws none other.
    pub async fn start_passkey_sign_in(
        &self,
        by: PasskeySignInFor,
        caller: &Requester,
    ) -> Result<Ceremony, Error> {
        let webauthn = self.webauthn()?;
        let now = self.clock.now();
        match by {
            PasskeySignInFor::AnyAccount => {
                self.limiter.passkey_sign_in(caller.ip, now).await?;
                let (options, state) = webauthn
                    .start_discoverable_authentication()
                    .map_err(|e| Error::internal(e.to_string()))?;
                self.store_sign_in_ceremony(None, &state_json(&state)?, options_json(options)?)
                    .await
            }
            PasskeySignInFor::Name(name) => {
                // Counted whether or not the name has an account.
                self.limiter.passkey_sign_in(caller.ip, now).await?;
                let lookup = match &name {
                    LoginName::Username(username) => Lookup::Username(username),
                    LoginName::Email(email) => Lookup::Email(email),
                };
                let user = self.store.user(lookup).await?;
                // Asked for an unknown name too (of no account: none), so that it takes
                // the same reads as a name with an account.
                let keys = self
                    .passkeys_of(user.as_ref().map_or("", |user| user.id.as_str()))
                    .await?;
                let (Some(user), false) = (user, keys.is_empty()) else {
                    return self.decoy_sign_in(webauthn, &name).await;
                };
                let (options, state) = webauthn
                    .start_passkey_authentication(&keys)
                    .map_err(|e| Error::internal(e.to_string()))?;
                let mut options = options_json(options)?;
                without_transports(&mut options);
                self.store_sign_in_ceremony(Some(&user.id), &state_json(&state)?, options)
                    .await
            }
            PasskeySignInFor::SecondStep(challenge) => {
                let digest = challenge.digest();
                let token = self.store.live_token(&digest, now).await?;
                let Some((token, method)) =
                    token.and_then(|t| Purpose::second_step(&t.purpose).map(|method| (t, method)))
                else {
                    return Err(Error::Unauthorized(NO_CHALLENGE));
                };
                let keys = self.passkeys_of(&token.user_id).await?;
                if keys.is_empty() {
                    return Err(Error::invalid("challenge_id", NO_PASSKEYS_FOR_NAME));
                }
                let (options, state) = webauthn
                    .start_passkey_authentication(&keys)
                    .map_err(|e| Error::internal(e.to_string()))?;
                if !self
                    .store
                    .set_token_state(
                        &digest,
                        Purpose::SecondStep(method),
                        &state_json(&state)?,
                        now,
                    )
                    .await?
                {
                    return Err(Error::Unauthorized(NO_CHALLENGE));
                }
                Ok(Ceremony {
                    challenge,
                    // The sign-in's challenge, which keeps its own expiry.
                    expires: token.expires,
                    options: options_json(options)?,
                })
            }
        }
    }

    /// A sign-in by a name without passkeys: a ceremony shaped as one for a name with
    /// passkeys, listing the name's decoy credentials, that no passkey can finish.
    async fn decoy_sign_in(
        &self,
        webauthn: &Webauthn,
        name: &LoginName,
    ) -> Result<Ceremony, Error> {
        let key = self
            .decoys
            .get_or_try_init(|| async {
                let mut fresh = [0u8; 32];
                OsRng.fill_bytes(&mut fresh);
                let stored = self
                    .store
                    .service_key(DECOY_KEY, &URL_SAFE_NO_PAD.encode(fresh), self.clock.now())
                    .await?;
                DecoyKey::new(&stored)
            })
            .await?;
        let (options, _) = webauthn
            .start_passkey_authentication(&[])
            .map_err(|e| Error::internal(e.to_string()))?;
        let mut options = options_json(options)?;
        let decoy: Vec<serde_json::Value> = key
            .credential_ids(name)
            .iter()
            .map(|id| serde_json::json!({"id": URL_SAFE_NO_PAD.encode(id), "type": "public-key"}))
            .collect();
        match options.pointer_mut("/publicKey/allowCredentials") {
            Some(allowed) => *allowed = serde_json::Value::Array(decoy),
            None => return Err(Error::internal("no allowCredentials in the options")),
        }
        self.store_sign_in_ceremony(None, DECOY_STATE, options)
            .await
    }

    /// A sign-in ceremony without a password, stored for its second step: for the
    /// account `user_id` (started with its name), or for any account.
    async fn store_sign_in_ceremony(
        &self,
        user_id: Option<&str>,
        state: &str,
        options: serde_json::Value,
    ) -> Result<Ceremony, Error> {
        let challenge = SecretToken::generate();
        let now = self.clock.now();
        let expires = now.saturating_add(CHALLENGE_TTL);
        self.store
            .insert_passkey_sign_in(NewPasskeySignIn {
                digest: &challenge.digest(),
                user_id,
                state,
                created: now,
                expires,
            })
            .await?;
        Ok(Ceremony {
            challenge,
            expires,
            options,
        })
    }

    /// Finishes a sign-in with a passkey: the browser's signature for the ceremony. The
    /// passkey's counter must have moved on since its last use (a clone of it would
    /// show one that has not), and is stored under compare-and-swap.
    pub async fn finish_passkey_sign_in(
        &self,
        challenge: SecretToken,
        credential: serde_json::Value,
        caller: &Requester,
    ) -> Result<Session, Error> {
        let webauthn = self.webauthn()?;
        let credential: PublicKeyCredential = parse_credential(credential)?;
        let digest = challenge.digest();
        let now = self.clock.now();
        // An empty id: the passkey names no account known here, and the line names none.
        let refused = |user_id: &str, reason: String| {
            if user_id.is_empty() {
                tracing::warn!(event = "passkey_sign_in_refused", client = ?caller.ip, reason = %reason);
            } else {
                tracing::warn!(event = "passkey_sign_in_refused", user_id = %user_id, client = ?caller.ip, reason = %reason);
            }
            Error::Unauthorized(PASSKEY_REFUSED)
        };
        // The second step of a sign-in (a token of the account's), or a ceremony of its
        // own (for a name, or for any account).
        let (ceremony, sign_in, stored, result) = if let Some(token) =
            self.store.live_token(&digest, now).await?
        {
            let Some(method) = Purpose::second_step(&token.purpose) else {
                return Err(Error::Unauthorized(NO_CEREMONY));
            };
            let Some(state) = token.state.as_deref() else {
                return Err(Error::Unauthorized(NO_CEREMONY));
            };
            let (stored, result) = self
                .signed_by_own(webauthn, &credential, state, &token.user_id, &refused)
                .await?;
            let sign_in = SignIn {
                method,
                second_factor: Some(SecondFactor::Passkey),
            };
            (Some(Purpose::SecondStep(method)), sign_in, stored, result)
        } else {
            let Some(ceremony) = self.store.passkey_sign_in(&digest, now).await? else {
                return Err(Error::Unauthorized(NO_CEREMONY));
            };
            let sign_in = SignIn::one_step(SignInMethod::Passkey);
            let (stored, result) = match ceremony.user_id {
                Some(user_id) => {
                    self.signed_by_own(webauthn, &credential, &ceremony.state, &user_id, &refused)
                        .await?
                }
                None if ceremony.state == DECOY_STATE => {
                    return Err(refused(
                        "",
                        "a sign-in by a name without passkeys".to_string(),
                    ));
                }
                None => {
                    self.discovered(webauthn, &credential, &ceremony.state, &refused)
                        .await?
                }
            };
            (None, sign_in, stored, result)
        };
        let user_id = stored.user_id.as_str();
        let mut passkey: Passkey =
            serde_json::from_str(&stored.passkey).map_err(Error::internal)?;
        passkey.update_credential(&result);
        let new_counter = i64::from(result.counter());
        let updated = state_json(&passkey)?;
        let session = SecretToken::generate();
        let (ip, user_agent) = caller.client();
        let effect = Redemption::SecondStep {
            digest: &session.digest(),
            expires: now.saturating_add(self.session_ttl),
            client: SessionClient {
                ip: ip.as_deref(),
                user_agent,
            },
            sign_in,
            factor: FactorUse::Passkey {
                credential_id: &stored.credential_id,
                counter: stored.counter,
                new_counter,
                passkey: &updated,
                now,
            },
        };
        let audit = caller.audit(now);
        let redeemed = match ceremony {
            Some(purpose) => self.store.redeem_token(&digest, purpose, &audit, effect),
            None => self
                .store
                .redeem_passkey_sign_in(&digest, user_id, &audit, effect),
        };
        match redeemed.await? {
            Redeemed::Done { .. } => {
                tracing::info!(event = "passkey_sign_in", user_id = %user_id);
                self.read_session(session).await
            }
            Redeemed::FactorRefused => Err(refused(
                user_id,
                "the passkey was used meanwhile".to_string(),
            )),
            _ => Err(Error::Unauthorized(NO_CEREMONY)),
        }
    }

    /// Checks the signature of a ceremony for the account `user_id`'s passkeys (`state`,
    /// as stored): answers the stored passkey that made it, and the result.
    async fn signed_by_own(
        &self,
        webauthn: &Webauthn,
        credential: &PublicKeyCredential,
        state: &str,
        user_id: &str,
        refused: &impl Fn(&str, String) -> Error,
    ) -> Result<(StoredPasskey, AuthenticationResult), Error> {
        let state: PasskeyAuthentication = serde_json::from_str(state).map_err(Error::internal)?;
        let result = webauthn
            .finish_passkey_authentication(credential, &state)
            .map_err(|e| refused(user_id, e.to_string()))?;
        let used_id = URL_SAFE_NO_PAD.encode(result.cred_id());
        let stored = self
            .store
            .passkeys(user_id)
            .await?
            .into_iter()
            .find(|p| p.credential_id == used_id)
            .ok_or_else(|| refused(user_id, "the passkey was deleted".to_string()))?;
        Ok((stored, result))
    }

    /// Checks the signature of a ceremony started without a name: the credential names
    /// its passkey, whose account's user handle it must carry too. Answers the stored
    /// passkey (with its account) and the result.
    async fn discovered(
        &self,
        webauthn: &Webauthn,
        credential: &PublicKeyCredential,
        state: &str,
        refused: &impl Fn(&str, String) -> Error,
    ) -> Result<(StoredPasskey, AuthenticationResult), Error> {
        let state: DiscoverableAuthentication =
            serde_json::from_str(state).map_err(Error::internal)?;
        let (handle, credential_id) = webauthn
            .identify_discoverable_authentication(credential)
            .map_err(|e| refused("", e.to_string()))?;
        let Some(stored) = self
            .store
            .passkey(&URL_SAFE_NO_PAD.encode(credential_id))
            .await?
        else {
            return Err(refused("", "no such passkey".to_string()));
        };
        if user_handle(&stored.user_id) != handle {
            return Err(refused(
                &stored.user_id,
                "another account's user handle".to_string(),
            ));
        }
        let passkey: Passkey = serde_json::from_str(&stored.passkey).map_err(Error::internal)?;
        let result = webauthn
            .finish_discoverable_authentication_v2(credential, state, &passkey)
            .map_err(|e| refused(&stored.user_id, e.to_string()))?;
        Ok((stored, result))
    }

    /// The user's passkeys.
    pub async fn list_passkeys(&self, id: &UserId) -> Result<Vec<PasskeyInfo>, Error> {
        self.read(&AccountKey::Id(id.clone())).await?;
        Ok(self
            .store
            .passkeys(id.as_str())
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub async fn rename_passkey(
        &self,
        id: &UserId,
        passkey: &str,
        name: String,
    ) -> Result<(), Error> {
        if self
            .store
            .rename_passkey(id.as_str(), passkey, &name)
            .await?
        {
            Ok(())
        } else {
            Err(Error::NotFound(NO_PASSKEY))
        }
    }

    pub async fn delete_passkey(
        &self,
        id: &UserId,
        passkey: &str,
        caller: &Requester,
    ) -> Result<(), Error> {
        if self
            .store
            .delete_passkey(id.as_str(), passkey, &caller.audit(self.clock.now()))
            .await?
        {
            tracing::info!(event = "passkey_deleted", user_id = %id.as_str());
            Ok(())
        } else {
            Err(Error::NotFound(NO_PASSKEY))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(raw: &str) -> LoginName {
        if raw.contains('@') {
            LoginName::parse(None, Some(raw.to_string())).unwrap()
        } else {
            LoginName::parse(Some(raw.to_string()), None).unwrap()
        }
    }

    #[test]
    fn a_decoy_follows_from_the_name_and_the_key_alone() {
        let key = DecoyKey::new(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap();
        let again = DecoyKey::new(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap();
        let other = DecoyKey::new(&URL_SAFE_NO_PAD.encode([8u8; 32])).unwrap();
        let kim = key.credential_ids(&name("kim"));
        assert_eq!(
            kim,
            again.credential_ids(&name("kim")),
            "same key, same decoy"
        );
        assert_eq!(
            kim,
            key.credential_ids(&name("KIM")),
            "as the name is looked up"
        );
        assert_ne!(kim, other.credential_ids(&name("kim")));
        assert_ne!(kim, key.credential_ids(&name("kim@example.com")));
        let (mut lengths, mut counts) = (Vec::new(), [0; 3]);
        for i in 0..400 {
            let ids = key.credential_ids(&name(&format!("user{i}")));
            counts[ids.len()] += 1;
            if let [a, b] = ids.as_slice() {
                assert_ne!(a, b);
            }
            for id in ids {
                assert!(DECOY_ID_LENGTHS.contains(&id.len()), "{}", id.len());
                lengths.push(id.len());
            }
        }
        for length in DECOY_ID_LENGTHS {
            assert!(lengths.contains(&length), "{length} is used");
        }
        assert_eq!(counts[0], 0);
        assert!(
            (50..150).contains(&counts[2]),
            "about one in four has two: {counts:?}"
        );
        assert!(DecoyKey::new("not base64!").is_err());
        assert_eq!(format!("{key:?}"), "DecoyKey(..)");
    }

    #[test]
    fn a_sign_in_by_name_lists_no_transports() {
        let mut options = serde_json::json!({"publicKey": {"allowCredentials": [
            {"id": "AAAA", "type": "public-key", "transports": ["internal", "hybrid"]},
            {"id": "BBBB", "type": "public-key"},
        ], "challenge": "x"}});
        without_transports(&mut options);
        assert_eq!(
            options,
            serde_json::json!({"publicKey": {"allowCredentials": [
                {"id": "AAAA", "type": "public-key"},
                {"id": "BBBB", "type": "public-key"},
            ], "challenge": "x"}})
        );
    }
}
