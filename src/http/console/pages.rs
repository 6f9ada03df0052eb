//! The console's HTML, in the hosted pages' frame and stylesheet. Every value is
//! escaped by `maud`; nothing is loaded from another host, and no page needs
//! JavaScript.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup};

use super::super::ui::{document, field, when, Frame};
use super::super::AppState;
use super::CONSOLE_TTL;
use crate::core::limits::LockoutState;
use crate::core::users::{PasskeyInfo, SecondFactors};
use crate::domain::{AuditPage, User};
use crate::store::SessionDetails;

/// A fixed notice a redirect can ask a page to show (`?notice=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleNotice {
    Saved,
    VerificationSent,
    Unlocked,
    SessionEnded,
    SessionsEnded,
    FactorsReset,
    Deleted,
}

impl ConsoleNotice {
    const ALL: [Self; 7] = [
        Self::Saved,
        Self::VerificationSent,
        Self::Unlocked,
        Self::SessionEnded,
        Self::SessionsEnded,
        Self::FactorsReset,
        Self::Deleted,
    ];

    pub fn as_query(self) -> &'static str {
        match self {
            Self::Saved => "saved",
            Self::VerificationSent => "verification-sent",
            Self::Unlocked => "unlocked",
            Self::SessionEnded => "session-ended",
            Self::SessionsEnded => "sessions-ended",
            Self::FactorsReset => "factors-reset",
            Self::Deleted => "deleted",
        }
    }

    pub fn from_query(value: Option<&str>) -> Option<Self> {
        let value = value?;
        Self::ALL.into_iter().find(|n| n.as_query() == value)
    }

    fn text(self) -> &'static str {
        match self {
            Self::Saved => "The changes are saved.",
            Self::VerificationSent => "A new verification e-mail is on its way.",
            Self::Unlocked => {
                "The account's failed sign-in checks are forgotten: it is not locked out."
            }
            Self::SessionEnded => "That session is ended.",
            Self::SessionsEnded => "Every session of this user is ended.",
            Self::FactorsReset => {
                "The second factors are removed: the user signs in with the password alone."
            }
            Self::Deleted => "The user is deleted.",
        }
    }
}

/// A console page, ready to render with a status.
pub struct ConsolePage {
    title: String,
    body: Markup,
    error: Option<String>,
    notice: Option<ConsoleNotice>,
    /// Signed in: the console's navigation is shown.
    signed_in: bool,
}

impl ConsolePage {
    fn new(title: impl Into<String>, body: Markup) -> Self {
        Self {
            title: title.into(),
            body,
            error: None,
            notice: None,
            signed_in: true,
        }
    }

    pub fn render(self, state: &AppState, status: StatusCode) -> Response {
        let nav = self.signed_in.then(|| {
            html! {
                nav.console aria-label="Console" {
                    @if let Some(tenant) = &state.ui.tenant {
                        span.tenant { "Tenant " strong { (tenant) } }
                    }
                    a href="/admin/users" { "Users" }
                    form method="post" action="/admin/signout" {
                        button.link type="submit" { "Sign out of the console" }
                    }
                }
            }
        });
        let Html(page) = document(
            &state.ui,
            &Frame {
                title: &self.title,
                error: self.error.as_deref(),
                notice: self.notice.map(ConsoleNotice::text),
                scripts: &[],
                nav,
            },
            self.body,
        );
        (status, Html(state.ui.with_tenant_links(page))).into_response()
    }
}

/// The sign-in form: the admin key, posted (never in an address).
pub fn sign_in(error: Option<&str>) -> ConsolePage {
    let hours = CONSOLE_TTL / 3600;
    ConsolePage {
        error: error.map(str::to_string),
        signed_in: false,
        ..ConsolePage::new(
            "Admin console",
            html! {
                p { "Sign in with the service's admin key (on a service with tenants, this tenant's own key works too). This browser stays signed in to the console for " (hours) " hours, or until you sign out." }
                form method="post" action="/admin/signin" {
                    (field("key", "Admin key", "password", "off", None, true))
                    button type="submit" { "Sign in" }
                }
            },
        )
    }
}

/// The console without an admin key.
pub fn off() -> ConsolePage {
    ConsolePage {
        signed_in: false,
        ..ConsolePage::new(
            "The console is off",
            html! {
                p { "The admin console needs an admin key: start the service with --api-key (USERS_API_KEY) and sign in here with it." }
            },
        )
    }
}

/// A page that could not be shown, with why.
pub fn failure(message: &str) -> ConsolePage {
    ConsolePage {
        error: Some(message.to_string()),
        ..ConsolePage::new(
            "That did not work",
            html! { p { a href="/admin/users" { "Back to the users" } } },
        )
    }
}

/// The users, a page at a time, or the search's finds.
pub fn users(
    users: &[User],
    search: Option<&str>,
    offset: u64,
    next: Option<u64>,
    notice: Option<ConsoleNotice>,
) -> ConsolePage {
    ConsolePage {
        notice,
        ..ConsolePage::new(
            "Users",
            html! {
                form.search method="get" action="/admin/users" role="search" {
                    div.field {
                        label for="q" { "Find a user by id, username or e-mail" }
                        input id="q" name="q" type="search" value=[search] autocomplete="off";
                    }
                    button type="submit" { "Find" }
                    @if search.is_some() {
                        " " a href="/admin/users" { "Show every user" }
                    }
                }
                @if users.is_empty() {
                    p #users-count {
                        @if search.is_some() { "No user has this id, username or e-mail address." }
                        @else { "No users yet." }
                    }
                } @else {
                    table #users {
                        caption.visually-hidden { "Users" }
                        thead {
                            tr {
                                th scope="col" { "Username" }
                                th scope="col" { "E-mail" }
                                th scope="col" { "Verified" }
                                th scope="col" { "Created" }
                                th scope="col" { "Id" }
                            }
                        }
                        tbody {
                            @for user in users {
                                tr {
                                    td { a href={ "/admin/users/" (path_segment(&user.id)) } { (user.username) } }
                                    td { (user.email) }
                                    td { @if user.verified { "yes" } @else { "no" } }
                                    td { (when(user.created)) }
                                    td.id { code { (user.id) } }
                                }
                            }
                        }
                    }
                }
                @if search.is_none() && (offset > 0 || next.is_some()) {
                    nav aria-label="Pages of users" {
                        ul.pager {
                            @if offset > 0 {
                                li { a href={ "/admin/users?offset=" (offset.saturating_sub(u64::from(super::USERS_PER_PAGE))) } { "Previous page" } }
                            }
                            @if let Some(next) = next {
                                li { a href={ "/admin/users?offset=" (next) } { "Next page" } }
                            }
                        }
                    }
                }
            },
        )
    }
}

/// Everything the console shows of one user.
pub struct UserView {
    pub user: User,
    pub sessions: Vec<SessionDetails>,
    pub factors: SecondFactors,
    pub passkeys: Vec<PasskeyInfo>,
    pub lockout: LockoutState,
    pub events: AuditPage,
    pub now: i64,
}

/// One user: profile, e-mail, sign-in lockout, sessions, second factors, audit events,
/// and deletion.
pub fn user(view: &UserView, error: Option<&str>, notice: Option<ConsoleNotice>) -> ConsolePage {
    let user = &view.user;
    let base = format!("/admin/users/{}", path_segment(&user.id));
    let fields = user.profile.as_map();
    // Lines of key=value, unless a key or value would not survive them (then the
    // profile is shown, and left as it is by the form).
    let as_lines = fields
        .iter()
        .all(|(k, v)| !k.contains('=') && !k.contains(['\n', '\r']) && !v.contains(['\n', '\r']));
    let profile = fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n");
    let has_factors = view.factors.totp_since.is_some()
        || view.factors.totp_pending
        || view.factors.recovery_codes_left > 0
        || !view.passkeys.is_empty();
    ConsolePage {
        error: error.map(str::to_string),
        notice,
        ..ConsolePage::new(
            format!("User {}", user.username),
            html! {
                dl.facts {
                    dt { "Id" } dd { code #user-id { (user.id) } }
                    dt { "Created" } dd { (when(user.created)) }
                    dt { "Updated" } dd { (when(user.updated)) }
                }
                section aria-labelledby="profile" {
                    h2 #profile { "Profile" }
                    form method="post" action={ (base) "/profile" } {
                        (field("username", "Username", "text", "off", Some(&user.username), true))
                        (field("email", "E-mail", "email", "off", Some(&user.email), true))
                        @if as_lines {
                            div.field {
                                label for="profile-fields" { "Profile fields (one key=value per line)" }
                                textarea id="profile-fields" name="profile" rows="4" spellcheck="false" { (profile) }
                            }
                        } @else {
                            p { "Its profile fields hold line breaks or a key with “=”: change them through the API (Update)." }
                        }
                        button type="submit" { "Save the profile" }
                    }
                }
                section aria-labelledby="verification" {
                    h2 #verification { "E-mail address" }
                    @if user.verified {
                        p #verification-status { "Verified " (when(user.verification_date)) "." }
                    } @else {
                        p #verification-status { "Not verified yet." }
                        form method="post" action={ (base) "/verification" } {
                            button type="submit" { "Send the verification e-mail again" }
                        }
                    }
                }
                section aria-labelledby="lockout" {
                    h2 #lockout { "Sign-in lockout" }
                    p #lockout-status {
                        @if let Some(until) = view.lockout.locked_until {
                            "Locked out until " (when(until)) ": password and code checks are refused until then."
                        } @else {
                            "Not locked out. "
                            (view.lockout.attempts) " password or code checks counted in the current window."
                        }
                        @if view.lockout.strikes > 0 {
                            " Locked out " (view.lockout.strikes) " times before."
                        }
                    }
                    @if view.lockout.locked_until.is_some() || view.lockout.attempts > 0 || view.lockout.strikes > 0 {
                        form method="post" action={ (base) "/unlock" } {
                            button type="submit" { "Unlock and forget the failed checks" }
                        }
                    }
                }
                section aria-labelledby="sessions" {
                    h2 #sessions { "Sessions" }
                    @if view.sessions.is_empty() {
                        p #sessions-status { "No live session." }
                    } @else {
                        table #session-list {
                            caption.visually-hidden { "Live sessions" }
                            thead {
                                tr {
                                    th scope="col" { "Signed in" }
                                    th scope="col" { "How" }
                                    th scope="col" { "Last seen" }
                                    th scope="col" { "Address" }
                                    th scope="col" { "Browser" }
                                    th scope="col" { "Expires" }
                                    th scope="col" { span.visually-hidden { "Action" } }
                                }
                            }
                            tbody {
                                @for s in &view.sessions {
                                    tr {
                                        td { (when(s.created)) }
                                        td { (s.sign_in.as_ref().map(|m| m.method.as_str()).unwrap_or("—")) }
                                        td { (s.last_seen.map(when).unwrap_or_else(|| "—".to_string())) }
                                        td { (s.client_ip.as_deref().unwrap_or("—")) }
                                        td.agent { (s.user_agent.as_deref().unwrap_or("—")) }
                                        td { (when(s.expires)) }
                                        td {
                                            form method="post" action={ (base) "/sessions/end" } {
                                                input type="hidden" name="session" value=(s.handle.as_str());
                                                button type="submit" aria-label={ "End the session signed in " (when(s.created)) ", session " (s.handle.as_str()) } { "End" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        form method="post" action={ (base) "/sessions/end-all" } {
                            button type="submit" { "End every session" }
                        }
                    }
                }
                section aria-labelledby="factors" {
                    h2 #factors { "Second factors" }
                    ul #factor-list {
                        li {
                            "Authenticator app (TOTP): "
                            @if let Some(since) = view.factors.totp_since { "on since " (when(since)) }
                            @else if view.factors.totp_pending { "being set up" }
                            @else { "off" }
                        }
                        li { "Recovery codes left: " (view.factors.recovery_codes_left) }
                        li {
                            "Passkeys: "
                            @if view.passkeys.is_empty() { "none" }
                            @else {
                                @for (i, key) in view.passkeys.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    (key.name)
                                }
                            }
                        }
                    }
                    @if has_factors {
                        form method="post" action={ (base) "/factors/reset" } {
                            button type="submit" { "Remove every second factor" }
                        }
                    }
                }
                section aria-labelledby="events" {
                    h2 #events { "Audit events" }
                    @if view.events.events.is_empty() {
                        p { "No events." }
                    } @else {
                        table #event-list {
                            caption.visually-hidden { "Audit events, newest first" }
                            thead {
                                tr {
                                    th scope="col" { "When" }
                                    th scope="col" { "Event" }
                                    th scope="col" { "Outcome" }
                                    th scope="col" { "By" }
                                    th scope="col" { "Address" }
                                    th scope="col" { "Request" }
                                }
                            }
                            tbody {
                                @for e in &view.events.events {
                                    tr {
                                        td { (when(e.at)) }
                                        td { code { (e.kind) } }
                                        td { (e.outcome) }
                                        td { (e.actor) }
                                        td { (e.client_ip.as_deref().unwrap_or("—")) }
                                        td.id { (e.request_id.as_deref().unwrap_or("—")) }
                                    }
                                }
                            }
                        }
                        @if let Some(before) = view.events.next {
                            p { a href={ (base) "?before=" (before) "#events" } { "Older events" } }
                        }
                    }
                }
                section aria-labelledby="danger" {
                    h2 #danger { "Delete" }
                    p { "Deleting the user ends their sessions and removes the account for good; its id is never given out again." }
                    p { a href={ (base) "/delete" } { "Delete this user…" } }
                }
                p.fine { "Shown " (when(view.now)) "." }
            },
        )
    }
}

/// Deleting a user: what it does, and the username typed again to confirm.
pub fn delete(user: &User, error: Option<&str>) -> ConsolePage {
    let base = format!("/admin/users/{}", path_segment(&user.id));
    ConsolePage {
        error: error.map(str::to_string),
        ..ConsolePage::new(
            format!("Delete the user {}", user.username),
            html! {
                p { "This deletes " strong { (user.username) } " (" (user.email) "), ends their sessions and cannot be undone." }
                form method="post" action={ (base) "/delete" } {
                    (field("confirm", "Type the username to confirm", "text", "off", None, true))
                    button.danger type="submit" { "Delete the user" }
                }
                p { a href=(base) { "Keep the user" } }
            },
        )
    }
}

/// `id` as one segment of an address: unreserved characters as they are, every other
/// byte percent-encoded.
pub fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_one_path_segment() {
        assert_eq!(path_segment("a-b_c.d~1"), "a-b_c.d~1");
        assert_eq!(path_segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn notices_come_back_from_their_query_value() {
        for notice in ConsoleNotice::ALL {
            assert_eq!(
                ConsoleNotice::from_query(Some(notice.as_query())),
                Some(notice)
            );
        }
        assert_eq!(ConsoleNotice::from_query(Some("<script>")), None);
    }
}
