//! M3O's User API: `POST /v1/user/<Method>`, answering exactly as the hosted M3O
//! platform did, so apps written with its SDKs work by changing the base address.
//! Accounts carry `verified`, `verification_date` and `profile`; sessions name their
//! user `userId`; int64 values are decimal strings; Update answers `{}`.

use serde::Serialize;

use super::json::{Empty, Int64};
use super::methods::*;
use super::{
    answers, CeremonyResponse, PasskeyResponse, PasskeysResponse, RecoveryCodesResponse,
    SecondFactorsResponse, SessionResponse, SessionsResponse, Surface, TotpEnrolmentResponse,
    VerifyTokenResponse,
};
use crate::domain::{Session, User};

pub struct M3o;

impl Surface for M3o {
    const SERVICE: &'static str = "user";
    const PREFIX: &'static str = "/v1/user/";
}

/// An account: the same fields as the Micro surface's user, answered as `account`.
pub use super::micro::{UserView as Account, UsersResponse};

#[derive(Serialize)]
pub struct SessionView {
    pub id: String,
    #[serde(rename = "userId")]
    pub user_id: String,
    pub created: Int64,
    pub expires: Int64,
}

impl From<Session> for SessionView {
    fn from(session: Session) -> Self {
        Self {
            id: session.id.expose().to_owned(),
            user_id: session.user_id,
            created: Int64(session.created),
            expires: Int64(session.expires),
        }
    }
}

#[derive(Serialize)]
pub struct AccountResponse {
    pub account: Account,
}

impl From<User> for AccountResponse {
    fn from(user: User) -> Self {
        Self {
            account: user.into(),
        }
    }
}

/// Update answers `{}` here: M3O did not echo the account.
impl From<User> for Empty {
    fn from(_: User) -> Self {
        Empty {}
    }
}

answers!(M3o {
    Create => AccountResponse,
    Read => AccountResponse,
    Update => Empty,
    Delete => Empty,
    List => UsersResponse,
    Login => SessionResponse<SessionView>,
    Logout => Empty,
    LogoutAll => Empty,
    ReadSession => SessionResponse<SessionView>,
    UpdatePassword => Empty,
    SendVerificationEmail => Empty,
    VerifyEmail => Empty,
    SendPasswordResetEmail => Empty,
    ResetPassword => Empty,
    SendMagicLink => Empty,
    VerifyToken => VerifyTokenResponse<SessionView>,
    ListSessions => SessionsResponse,
    ListAuditEvents => super::AuditEventsResponse,
    RevokeSession => Empty,
    LoginMfa => SessionResponse<SessionView>,
    ReadSecondFactors => SecondFactorsResponse,
    StartTotp => TotpEnrolmentResponse,
    ConfirmTotp => RecoveryCodesResponse,
    DisableTotp => Empty,
    ResetSecondFactors => Empty,
    StartPasskeyRegistration => CeremonyResponse,
    FinishPasskeyRegistration => PasskeyResponse,
    StartPasskeyLogin => CeremonyResponse,
    FinishPasskeyLogin => SessionResponse<SessionView>,
    ListPasskeys => PasskeysResponse,
    RenamePasskey => Empty,
    DeletePasskey => Empty,
});
