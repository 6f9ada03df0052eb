//! The Micro `users` surface: `POST /users/Users/<Method>`, answering as the Micro
//! service did. Responses use snake_case, and int64 values (the timestamps) are decimal
//! strings as protobuf JSON writes them. The fields and methods that came later
//! (profile, verification, List, the e-mail flows) are additions that seed clients can
//! ignore.

use std::collections::BTreeMap;

use serde::Serialize;

use super::json::{Empty, Int64};
use super::methods::*;
use super::{
    answers, CeremonyResponse, PasskeyResponse, PasskeysResponse, RecoveryCodesResponse,
    SecondFactorsResponse, SessionResponse, SessionsResponse, Surface, TotpEnrolmentResponse,
    VerifyTokenResponse,
};
use crate::domain::{Session, User};

pub struct Micro;

impl Surface for Micro {
    const SERVICE: &'static str = "users";
    const PREFIX: &'static str = "/users/Users/";
}

#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub email: String,
    pub created: Int64,
    pub updated: Int64,
    pub verified: bool,
    pub verification_date: Int64,
    pub profile: BTreeMap<String, String>,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            username: user.username,
            email: user.email,
            created: Int64(user.created),
            updated: Int64(user.updated),
            verified: user.verified,
            verification_date: Int64(user.verification_date),
            profile: user.profile.into_map(),
        }
    }
}

#[derive(Serialize)]
pub struct SessionView {
    pub id: String,
    pub user_id: String,
    pub username: String,
    pub email: String,
    pub created: Int64,
    pub expires: Int64,
}

impl From<Session> for SessionView {
    fn from(session: Session) -> Self {
        Self {
            id: session.id.expose().to_owned(),
            user_id: session.user_id,
            username: session.username,
            email: session.email,
            created: Int64(session.created),
            expires: Int64(session.expires),
        }
    }
}

#[derive(Serialize)]
pub struct UserResponse {
    pub user: UserView,
}

impl From<User> for UserResponse {
    fn from(user: User) -> Self {
        Self { user: user.into() }
    }
}

#[derive(Serialize)]
pub struct UsersResponse {
    pub users: Vec<UserView>,
}

impl From<Vec<User>> for UsersResponse {
    fn from(users: Vec<User>) -> Self {
        Self {
            users: users.into_iter().map(Into::into).collect(),
        }
    }
}

answers!(Micro {
    Create => UserResponse,
    Read => UserResponse,
    Update => UserResponse,
    Delete => Empty,
    Search => UsersResponse,
    List => UsersResponse,
    UpdatePassword => Empty,
    Login => SessionResponse<SessionView>,
    Logout => Empty,
    LogoutAll => Empty,
    ReadSession => SessionResponse<SessionView>,
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
