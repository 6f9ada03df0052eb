//! Second factors: turning TOTP on and off, recovery codes, and the second step of a
//! sign-in (LoginMfa).

use super::*;
use crate::core::limits::Attempt;
use crate::core::sealing::Sealed;
use crate::core::totp::{self, Enrolment};
use crate::domain::{RecoveryCode, SecondFactor, SecondStep, TotpCode, RECOVERY_CODES};
use crate::store::FactorUse;

pub const NEEDS_OWN_SESSION: &str =
    "this method needs the user's own live session (Authorization: Bearer <session id>, or the session cookie)";
pub const TOTP_ALREADY_ON: &str = "is on already: turn it off first";
pub const NO_ENROLMENT: &str = "no enrolment was started: call StartTotp first";
pub const BAD_CODE: &str = "code is incorrect";
pub const CODE_USED: &str = "code was used already; wait for the next one";
pub const BAD_CODE_OR_PASSWORD: &str = "code or password is incorrect";
pub const NO_CHALLENGE: &str = "challenge not found or expired: sign in again";
pub const NO_SECOND_FACTOR: &str = "the user has no second factor";

/// A user's second factors, as they and the admin see them (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondFactors {
    /// When TOTP was confirmed; None when it is off.
    pub totp_since: Option<i64>,
    /// Whether an enrolment was started and not confirmed yet.
    pub totp_pending: bool,
    /// Unused recovery codes.
    pub recovery_codes_left: i64,
}

/// What turning TOTP off is proven with.
#[derive(Debug)]
pub enum DisableProof {
    Code(SecondStep),
    Password(Password),
}

impl Users {
    /// The user whose own session signs the request; second factors are set up with it
    /// and nothing else.
    fn own_session_user(caller: &Requester) -> Result<UserId, Error> {
        match &caller.session_user {
            Some(own) => UserId::parse("session", Some(own.clone())),
            None => Err(Error::Forbidden(NEEDS_OWN_SESSION)),
        }
    }

    /// Whether the user signs in with a second step.
    pub(super) async fn has_second_factor(&self, user_id: &str) -> Result<bool, Error> {
        Ok(self
            .store
            .totp(user_id)
            .await?
            .is_some_and(|t| t.confirmed.is_some()))
    }

    /// Stores a new challenge for the second step of `user_id`'s sign-in by `method`,
    /// as the error that hands it to the client.
    pub(super) async fn challenge(
        &self,
        user_id: &str,
        method: SignInMethod,
    ) -> Result<Error, Error> {
        let (challenge, expires) = self
            .short_lived_token(user_id, Purpose::SecondStep(method), None)
            .await?;
        tracing::info!(event = "second_step_asked", user_id = %user_id, method = method.as_str());
        Ok(Error::SecondFactorRequired {
            challenge: challenge.into_secret(),
            expires,
        })
    }

    /// A new token of `purpose` for `user_id` (with a ceremony's `state`) that lives
    /// [`CHALLENGE_TTL`] seconds, replacing the user's previous one of that purpose; the
    /// token and its expiry.
    pub(super) async fn short_lived_token(
        &self,
        user_id: &str,
        purpose: Purpose,
        state: Option<&str>,
    ) -> Result<(SecretToken, i64), Error> {
        let token = SecretToken::generate();
        let now = self.clock.now();
        let expires = now.saturating_add(CHALLENGE_TTL);
        self.store
            .insert_token(
                NewToken {
                    digest: &token.digest(),
                    user_id,
                    purpose,
                    created: now,
                    expires,
                },
                state,
            )
            .await?;
        Ok((token, expires))
    }

    /// The user's second factors.
    pub async fn second_factors(&self, id: &UserId) -> Result<SecondFactors, Error> {
        self.read(&AccountKey::Id(id.clone())).await?;
        let totp = self.store.totp(id.as_str()).await?;
        Ok(SecondFactors {
            totp_since: totp.as_ref().and_then(|t| t.confirmed),
            totp_pending: totp.as_ref().is_some_and(|t| t.confirmed.is_none()),
            recovery_codes_left: self.store.recovery_codes_left(id.as_str()).await?,
        })
    }

    /// Starts turning TOTP on for the caller's own account: a new secret, to be
    /// confirmed with a first code. Starting again replaces an unconfirmed secret.
    pub async fn start_totp(&self, caller: &Requester) -> Result<Enrolment, Error> {
        let id = Self::own_session_user(caller)?;
        let user = self.read(&AccountKey::Id(id.clone())).await?;
        let secret = totp::new_secret();
        let stored = self
            .sealing
            .seal(Sealed::TotpSecret, id.as_str(), &secret)?;
        if !self
            .store
            .start_totp(id.as_str(), &stored, self.clock.now())
            .await?
        {
            return Err(Error::invalid("totp", TOTP_ALREADY_ON));
        }
        tracing::info!(event = "totp_started", user_id = %id.as_str());
        totp::enrolment(secret, &self.totp_issuer, &user.email)
    }

    /// Confirms TOTP with a first code: from now on a sign-in takes a second step. Ends
    /// every other session of the user, and answers the recovery codes, shown this once.
    pub async fn confirm_totp(
        &self,
        code: TotpCode,
        caller: &Requester,
    ) -> Result<Vec<RecoveryCode>, Error> {
        let id = Self::own_session_user(caller)?;
        let mut attempt = self.reserve_code_attempt(&id, caller).await?;
        let pending = attempt
            .step(self.store.totp(id.as_str()))
            .await?
            .filter(|t| t.confirmed.is_none());
        let Some(pending) = pending else {
            attempt.failed(self.clock.now()).await?;
            return Err(Error::invalid("code", NO_ENROLMENT));
        };
        let now = self.clock.now();
        let accepted = attempt
            .step(async { totp::accepted_step(&self.totp_secret(&id, &pending)?, &code, now) })
            .await?;
        let Some(step) = accepted else {
            attempt.failed(now).await?;
            return Err(Error::Unauthorized(BAD_CODE));
        };
        attempt.succeeded().await?;
        let codes: Vec<RecoveryCode> = (0..RECOVERY_CODES)
            .map(|_| RecoveryCode::generate())
            .collect();
        let digests: Vec<TokenDigest> = codes.iter().map(|c| c.digest(id.as_str())).collect();
        if !self
            .store
            .confirm_totp(
                id.as_str(),
                &pending.secret,
                step,
                &caller.audit(now),
                &digests,
                caller.session.as_ref(),
            )
            .await?
        {
            // Confirmed, or started again, by another request meanwhile.
            return Err(Error::invalid("code", NO_ENROLMENT));
        }
        tracing::info!(event = "totp_confirmed", user_id = %id.as_str(), "other sessions ended");
        Ok(codes)
    }

    /// Turns TOTP off (and drops the recovery codes), proven with a current code, a
    /// recovery code or the password; each wrong one counts as a failed sign-in.
    pub async fn disable_totp(
        &self,
        id: &UserId,
        proof: DisableProof,
        caller: &Requester,
    ) -> Result<(), Error> {
        let mut attempt = self.reserve_code_attempt(id, caller).await?;
        let proven = match proof {
            DisableProof::Password(password) => {
                let account = attempt.step(self.store.credentials(Lookup::Id(id))).await?;
                // check_password settles the attempt itself.
                return match self.check_password(attempt, account, password).await? {
                    Some(_) => self.remove_second_factors(id, caller).await,
                    None => Err(Error::Unauthorized(BAD_CODE_OR_PASSWORD)),
                };
            }
            DisableProof::Code(step) => {
                let Some(record) = attempt.step(self.store.totp(id.as_str())).await? else {
                    attempt.failed(self.clock.now()).await?;
                    return Err(Error::invalid("totp", "is not on"));
                };
                let factor = attempt
                    .step(async { self.factor_use(id, &record, &step) })
                    .await?;
                let used = match &factor {
                    Some(FactorUseOwned::Totp(step)) => FactorUse::TotpStep(*step),
                    Some(FactorUseOwned::Recovery(digest)) => FactorUse::RecoveryCode(digest),
                    None => {
                        attempt.failed(self.clock.now()).await?;
                        return Err(Error::Unauthorized(BAD_CODE_OR_PASSWORD));
                    }
                };
                attempt
                    .step(self.store.use_factor(id.as_str(), used))
                    .await?
            }
        };
        if !proven {
            attempt.failed(self.clock.now()).await?;
            return Err(Error::Unauthorized(BAD_CODE_OR_PASSWORD));
        }
        attempt.succeeded().await?;
        self.remove_second_factors(id, caller).await
    }

    async fn remove_second_factors(&self, id: &UserId, caller: &Requester) -> Result<(), Error> {
        self.store
            .remove_second_factors(id.as_str(), &caller.audit(self.clock.now()))
            .await?;
        tracing::info!(event = "second_factors_removed", user_id = %id.as_str());
        Ok(())
    }

    /// The admin's reset: removes the user's second factors and passkeys, for a user
    /// who lost them.
    pub async fn reset_second_factors(&self, id: &UserId, caller: &Requester) -> Result<(), Error> {
        self.read(&AccountKey::Id(id.clone())).await?;
        let audit = caller.audit(self.clock.now());
        let factors = self
            .store
            .remove_second_factors(id.as_str(), &audit)
            .await?;
        let passkeys = self.store.delete_passkeys(id.as_str(), &audit).await?;
        if factors || passkeys > 0 {
            tracing::info!(event = "second_factors_reset", user_id = %id.as_str());
            Ok(())
        } else {
            Err(Error::NotFound(NO_SECOND_FACTOR))
        }
    }

    /// The second step of a sign-in: the challenge the first step answered with, and a
    /// TOTP code or a recovery code, which is used up. Wrong codes count against the
    /// account's sign-in limit (and the client's), as wrong passwords do.
    pub async fn login_mfa(
        &self,
        challenge: SecretToken,
        step: SecondStep,
        caller: &Requester,
    ) -> Result<Session, Error> {
        let digest = challenge.digest();
        let now = self.clock.now();
        let found = self.store.live_token(&digest, now).await?;
        let Some((user_id, method)) =
            found.and_then(|token| Some((token.user_id, Purpose::second_step(&token.purpose)?)))
        else {
            return Err(Error::Unauthorized(NO_CHALLENGE));
        };
        let id = UserId::parse("user_id", Some(user_id))?;
        let mut attempt = self.reserve_code_attempt(&id, caller).await?;
        let Some(record) = attempt.step(self.store.totp(id.as_str())).await? else {
            // Turned off (by the admin) since the first step.
            attempt.failed(self.clock.now()).await?;
            return Err(Error::Unauthorized(NO_CHALLENGE));
        };
        let factor = attempt
            .step(async { self.factor_use(&id, &record, &step) })
            .await?;
        let Some(factor) = factor else {
            attempt.failed(self.clock.now()).await?;
            tracing::warn!(event = "second_step_failed", user_id = %id.as_str(), client = ?caller.ip);
            return Err(Error::Unauthorized(BAD_CODE));
        };
        let (used, second_factor) = match &factor {
            FactorUseOwned::Totp(step) => (FactorUse::TotpStep(*step), SecondFactor::Totp),
            FactorUseOwned::Recovery(digest) => {
                (FactorUse::RecoveryCode(digest), SecondFactor::RecoveryCode)
            }
        };
        let session = SecretToken::generate();
        let expires = now.saturating_add(self.session_ttl);
        let (ip, user_agent) = caller.client();
        let outcome = attempt
            .step(self.store.redeem_token(
                &digest,
                Purpose::SecondStep(method),
                &caller.audit(now),
                Redemption::SecondStep {
                    digest: &session.digest(),
                    expires,
                    client: SessionClient {
                        ip: ip.as_deref(),
                        user_agent,
                    },
                    sign_in: SignIn {
                        method,
                        second_factor: Some(second_factor),
                    },
                    factor: used,
                },
            ))
            .await?;
        match outcome {
            Redeemed::Done { .. } => {
                attempt.succeeded().await?;
                tracing::info!(event = "login_second_step", user_id = %id.as_str(), factor = second_factor.as_str());
                self.read_session(session).await
            }
            Redeemed::FactorRefused => {
                attempt.failed(self.clock.now()).await?;
                tracing::warn!(event = "second_step_failed", user_id = %id.as_str(), client = ?caller.ip);
                Err(Error::Unauthorized(match factor {
                    FactorUseOwned::Totp(_) => CODE_USED,
                    FactorUseOwned::Recovery(_) => BAD_CODE,
                }))
            }
            Redeemed::Expired | Redeemed::NotFound | Redeemed::SecondStepNeeded { .. } => {
                attempt.failed(self.clock.now()).await?;
                Err(Error::Unauthorized(NO_CHALLENGE))
            }
        }
    }

    /// One code check against the user's sign-in limit and the client's.
    async fn reserve_code_attempt(
        &self,
        id: &UserId,
        caller: &Requester,
    ) -> Result<Attempt, Error> {
        let mut attempt = self
            .limiter
            .reserve(
                Some(&LimitKey::user_id(id.as_str())),
                caller.ip,
                caller.audit(self.clock.now()),
            )
            .await?;
        attempt.concerns(id.as_str());
        Ok(attempt)
    }

    /// What a second step would use up: the TOTP step its code is right for now, or
    /// the recovery code's digest (whether that is unused, only using it up tells).
    fn factor_use(
        &self,
        id: &UserId,
        record: &TotpRecord,
        step: &SecondStep,
    ) -> Result<Option<FactorUseOwned>, Error> {
        Ok(match step {
            SecondStep::Totp(code) => {
                let secret = self.totp_secret(id, record)?;
                totp::accepted_step(&secret, code, self.clock.now())?.map(FactorUseOwned::Totp)
            }
            SecondStep::Recovery(code) => Some(FactorUseOwned::Recovery(code.digest(id.as_str()))),
        })
    }

    /// The user's TOTP secret, opened if it is sealed. One that does not open (its key
    /// was not given, or the value was altered) fails the request as an internal error,
    /// whose log line says why.
    fn totp_secret(&self, id: &UserId, record: &TotpRecord) -> Result<String, Error> {
        self.sealing
            .open(Sealed::TotpSecret, id.as_str(), &record.secret)
            .map_err(Error::internal)
    }
}

/// A [`FactorUse`] that owns its digest.
enum FactorUseOwned {
    Totp(i64),
    Recovery(TokenDigest),
}
