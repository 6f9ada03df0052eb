//! The Micro `users` RPC surface: `POST /users/Users/<Method>` with JSON bodies.
//!
//! Requests accept each field in snake_case and in lowerCamelCase, as the Micro gateway
//! did, and ignore unknown fields. Responses use snake_case, and int64 values (the
//! timestamps) are decimal strings as protobuf JSON writes them.

use std::future::Future;
use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

use super::json::int_or_string;
use crate::domain::{
    AccountChanges, LoginName, NewAccount, Password, PasswordChange, Session, User, UserId,
    UserQuery,
};
use crate::error::Error;
use crate::service::Users;
use crate::session::SessionToken;

/// One RPC method: its name in the route, its wire types and how it calls the core.
pub trait Rpc: Send + Sync + 'static {
    const NAME: &'static str;
    type Request: DeserializeOwned + Send;
    type Response: Serialize + Send;

    /// `client` is the caller's address, for the limits that count per address.
    fn call(
        users: &Users,
        request: Self::Request,
        client: Option<IpAddr>,
    ) -> impl Future<Output = Result<Self::Response, Error>> + Send;
}

/// An int64 as protobuf JSON writes it: a decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int64(pub i64);

impl Serialize for Int64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub email: String,
    pub created: Int64,
    pub updated: Int64,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            username: user.username,
            email: user.email,
            created: Int64(user.created),
            updated: Int64(user.updated),
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

#[derive(Serialize)]
pub struct SessionResponse {
    pub session: SessionView,
}

impl From<Session> for SessionResponse {
    fn from(session: Session) -> Self {
        Self {
            session: session.into(),
        }
    }
}

/// `{}`
#[derive(Serialize)]
pub struct Empty {}

impl From<()> for Empty {
    fn from((): ()) -> Self {
        Self {}
    }
}

// Request bodies. Every field is optional on the wire so that a missing field is
// reported by the domain parser as "<field> is required" rather than as a JSON error.

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct CreateRequest {
    id: Option<String>,
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct IdRequest {
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct UpdateRequest {
    id: Option<String>,
    username: Option<String>,
    email: Option<String>,
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

pub struct Create;
pub struct Read;
pub struct Update;
pub struct Delete;
pub struct Search;
pub struct UpdatePassword;
pub struct Login;
pub struct Logout;
pub struct ReadSession;

impl Rpc for Create {
    const NAME: &'static str = "Create";
    type Request = CreateRequest;
    type Response = UserResponse;

    async fn call(
        users: &Users,
        r: CreateRequest,
        client: Option<IpAddr>,
    ) -> Result<UserResponse, Error> {
        let account = NewAccount::parse(r.id, r.username, r.email, r.password)?;
        users.create(account, client).await.map(Into::into)
    }
}

impl Rpc for Read {
    const NAME: &'static str = "Read";
    type Request = IdRequest;
    type Response = UserResponse;

    async fn call(
        users: &Users,
        r: IdRequest,
        _client: Option<IpAddr>,
    ) -> Result<UserResponse, Error> {
        let id = UserId::parse("id", r.id)?;
        users.read(&id).await.map(Into::into)
    }
}

impl Rpc for Update {
    const NAME: &'static str = "Update";
    type Request = UpdateRequest;
    type Response = UserResponse;

    async fn call(
        users: &Users,
        r: UpdateRequest,
        _client: Option<IpAddr>,
    ) -> Result<UserResponse, Error> {
        let id = UserId::parse("id", r.id)?;
        let changes = AccountChanges::parse(r.username, r.email)?;
        users.update(&id, changes).await.map(Into::into)
    }
}

impl Rpc for Delete {
    const NAME: &'static str = "Delete";
    type Request = IdRequest;
    type Response = Empty;

    async fn call(users: &Users, r: IdRequest, _client: Option<IpAddr>) -> Result<Empty, Error> {
        let id = UserId::parse("id", r.id)?;
        users.delete(&id).await.map(Into::into)
    }
}

impl Rpc for Search {
    const NAME: &'static str = "Search";
    type Request = SearchRequest;
    type Response = UsersResponse;

    async fn call(
        users: &Users,
        r: SearchRequest,
        _client: Option<IpAddr>,
    ) -> Result<UsersResponse, Error> {
        let query = UserQuery::parse(r.username, r.email, r.limit, r.offset)?;
        let found = users.search(&query).await?;
        Ok(UsersResponse {
            users: found.into_iter().map(Into::into).collect(),
        })
    }
}

impl Rpc for UpdatePassword {
    const NAME: &'static str = "UpdatePassword";
    type Request = UpdatePasswordRequest;
    type Response = Empty;

    async fn call(
        users: &Users,
        r: UpdatePasswordRequest,
        client: Option<IpAddr>,
    ) -> Result<Empty, Error> {
        let change = PasswordChange::parse(
            r.user_id,
            r.old_password,
            r.new_password,
            r.confirm_password,
        )?;
        users.update_password(change, client).await.map(Into::into)
    }
}

impl Rpc for Login {
    const NAME: &'static str = "Login";
    type Request = LoginRequest;
    type Response = SessionResponse;

    async fn call(
        users: &Users,
        r: LoginRequest,
        client: Option<IpAddr>,
    ) -> Result<SessionResponse, Error> {
        let name = LoginName::parse(r.username, r.email)?;
        let password = Password::candidate("password", r.password)?;
        users.login(name, password, client).await.map(Into::into)
    }
}

impl Rpc for Logout {
    const NAME: &'static str = "Logout";
    type Request = SessionRequest;
    type Response = Empty;

    async fn call(
        users: &Users,
        r: SessionRequest,
        _client: Option<IpAddr>,
    ) -> Result<Empty, Error> {
        let token = SessionToken::parse("session_id", r.session_id)?;
        users.logout(&token).await.map(Into::into)
    }
}

impl Rpc for ReadSession {
    const NAME: &'static str = "ReadSession";
    type Request = SessionRequest;
    type Response = SessionResponse;

    async fn call(
        users: &Users,
        r: SessionRequest,
        _client: Option<IpAddr>,
    ) -> Result<SessionResponse, Error> {
        let token = SessionToken::parse("session_id", r.session_id)?;
        users.read_session(token).await.map(Into::into)
    }
}
