//! The hosted pages' HTML. Every value is escaped by `maud`; no page loads anything
//! from another host, and none needs JavaScript.

use axum::response::Html;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::UiSettings;
use crate::core::users::{PasskeyInfo, SecondFactors};
use crate::domain::{SessionHandle, User};
use crate::store::SessionDetails;

/// A fixed notice a redirect can ask a page to show (`?notice=`); arbitrary text from
/// the address is never shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Welcome,
    Saved,
    PasswordChanged,
    PasswordReset,
    SignedOut,
    SignedOutEverywhere,
    CodeSent,
    MagicLinkSent,
    SessionEnded,
    TotpOn,
    TotpOff,
    PasskeyAdded,
    PasskeyDeleted,
}

impl Notice {
    pub fn from_query(value: Option<&str>) -> Option<Self> {
        Some(match value? {
            "welcome" => Self::Welcome,
            "saved" => Self::Saved,
            "password-changed" => Self::PasswordChanged,
            "password-reset" => Self::PasswordReset,
            "signed-out" => Self::SignedOut,
            "signed-out-everywhere" => Self::SignedOutEverywhere,
            "code-sent" => Self::CodeSent,
            "session-ended" => Self::SessionEnded,
            "totp-on" => Self::TotpOn,
            "totp-off" => Self::TotpOff,
            "passkey-added" => Self::PasskeyAdded,
            "passkey-deleted" => Self::PasskeyDeleted,
            _ => return None,
        })
    }

    fn text(self) -> &'static str {
        match self {
            Self::Welcome => "Welcome! We sent you an e-mail to confirm your address.",
            Self::Saved => "Your changes are saved.",
            Self::PasswordChanged => {
                "Your password is changed. Every other browser and app was signed out."
            }
            Self::PasswordReset => "Your password is set. Sign in with it.",
            Self::SignedOut => "You are signed out.",
            Self::SignedOutEverywhere => "You are signed out everywhere.",
            Self::CodeSent => "If an account has this address, we sent it a code. Enter it below.",
            Self::MagicLinkSent => {
                "If an account has this address, we sent it a link. Open it in this browser."
            }
            Self::SessionEnded => "That session is signed out.",
            Self::TotpOn => "Two-factor sign-in is on. Every other browser and app was signed out.",
            Self::TotpOff => "Two-factor sign-in is off.",
            Self::PasskeyAdded => "Your passkey is added. You can sign in with it.",
            Self::PasskeyDeleted => "That passkey is deleted.",
        }
    }
}

/// A page: its heading, its body, and what to tell the user above it.
pub struct Page {
    title: &'static str,
    body: Markup,
    error: Option<String>,
    notice: Option<Notice>,
    /// Loads the passkey buttons' scripts.
    passkeys: bool,
}

impl Page {
    fn new(title: &'static str, body: Markup) -> Self {
        Self {
            title,
            body,
            error: None,
            notice: None,
            passkeys: false,
        }
    }

    fn with_passkeys(mut self) -> Self {
        self.passkeys = true;
        self
    }

    pub fn plain(title: &'static str) -> Self {
        Self::new(title, html! {})
    }

    pub fn error(mut self, message: String) -> Self {
        self.error = Some(message);
        self
    }

    pub fn notice(mut self, notice: Option<Notice>) -> Self {
        self.notice = notice;
        self
    }

    pub fn render(self, ui: &UiSettings) -> Html<String> {
        let scripts: &[&str] = if self.passkeys {
            &["/micro.js", "/ui/passkeys.js"]
        } else {
            &[]
        };
        let Html(page) = document(
            ui,
            &Frame {
                title: self.title,
                error: self.error.as_deref(),
                notice: self.notice.map(Notice::text),
                scripts,
                nav: None,
            },
            self.body,
        );
        Html(ui.with_tenant_links(page))
    }

    pub fn sign_in(return_to: Option<&str>, login: Option<&str>) -> Self {
        Self::new(
            "Sign in",
            html! {
                form method="post" action="/ui/signin" {
                    @if let Some(to) = return_to {
                        input type="hidden" name="return_to" value=(to);
                    }
                    (field("login", "Username or e-mail", "text", "username", login, true))
                    (field("password", "Password", "password", "current-password", None, true))
                    button type="submit" { "Sign in" }
                }
                (passkey_button(None, return_to))
                nav aria-label="Other ways in" {
                    ul {
                        li { a href="/ui/forgot" { "Forgot your password?" } }
                        li { a href="/ui/magic" { "E-mail me a sign-in link" } }
                        li { a href="/ui/signup" { "Sign up" } }
                    }
                }
            },
        )
        .with_passkeys()
    }

    pub fn sign_up(username: Option<&str>, email: Option<&str>) -> Self {
        Self::new(
            "Sign up",
            html! {
                form method="post" action="/ui/signup" {
                    (field("username", "Username", "text", "username", username, true))
                    (field("email", "E-mail", "email", "email", email, true))
                    (field("password", "Password", "password", "new-password", None, true))
                    button type="submit" { "Sign up" }
                }
                p { "Already have an account? " a href="/ui/signin" { "Sign in" } }
            },
        )
    }

    pub fn signup_closed() -> Self {
        Self::new(
            "Sign up",
            html! {
                p { "Sign-up is closed here. Ask the people who run this service for an account." }
                p { a href="/ui/signin" { "Sign in" } }
            },
        )
    }

    pub fn forgot(email: Option<&str>) -> Self {
        Self::new(
            "Forgot your password?",
            html! {
                p { "We will e-mail you a code to set a new one." }
                form method="post" action="/ui/forgot" {
                    (field("email", "E-mail", "email", "email", email, true))
                    button type="submit" { "Send the code" }
                }
                p { a href="/ui/signin" { "Back to sign in" } }
            },
        )
    }

    pub fn reset(email: Option<&str>) -> Self {
        Self::new(
            "Set a new password",
            html! {
                form method="post" action="/ui/reset" {
                    (field("email", "E-mail", "email", "email", email, true))
                    (field("code", "Code", "text", "one-time-code", None, true))
                    (field("new_password", "New password", "password", "new-password", None, true))
                    (field("confirm_password", "Confirm new password", "password", "new-password", None, true))
                    button type="submit" { "Set the password" }
                }
                p { a href="/ui/forgot" { "Send a new code" } }
            },
        )
    }

    pub fn magic(email: Option<&str>) -> Self {
        Self::new(
            "Sign in with a link",
            html! {
                form method="post" action="/ui/magic" {
                    (field("email", "E-mail", "email", "email", email, true))
                    button type="submit" { "Send the link" }
                }
                p { a href="/ui/signin" { "Sign in with a password" } }
            },
        )
    }

    pub fn magic_landing(token: &str) -> Self {
        Self::new(
            "Sign in",
            html! {
                p { "Continue to sign in to this browser." }
                form method="post" action={ "/ui/magic/" (token) } {
                    button type="submit" { "Sign in" }
                }
            },
        )
    }

    pub fn verified(ok: bool) -> Self {
        if ok {
            Self::new(
                "Your e-mail address is verified",
                html! { p { a href="/ui/account" { "Go to your account" } } },
            )
        } else {
            Self::new(
                "This link did not work",
                html! {
                    p { "It was already used, or it expired. Sign in and ask for a new one." }
                    p { a href="/ui/account" { "Go to your account" } }
                },
            )
        }
    }

    /// The second step of a sign-in: a code for the challenge the first step got.
    pub fn second_step(challenge: &str, return_to: Option<&str>) -> Self {
        Self::new(
            "Enter your code",
            html! {
                p { "Your account has two-factor sign-in. Enter the 6-digit code your authenticator app shows, or one of your recovery codes." }
                form method="post" action="/ui/signin/code" {
                    input type="hidden" name="challenge_id" value=(challenge);
                    @if let Some(to) = return_to {
                        input type="hidden" name="return_to" value=(to);
                    }
                    div.field {
                        label for="code" { "Code" }
                        input id="code" name="code" type="text" autocomplete="one-time-code"
                            inputmode="text" autocapitalize="characters" spellcheck="false" required;
                    }
                    button type="submit" { "Continue" }
                }
                (passkey_button(Some(challenge), return_to))
                p { a href="/ui/signin" { "Start again" } }
            },
        )
        .with_passkeys()
    }

    /// Turning TOTP on: the QR code (an SVG this service drew), the secret as text, and
    /// the first code to confirm it.
    pub fn totp_enrol(secret: &str, qr_svg: &str) -> Self {
        // The SVG document without its XML declaration, inline (the pages load no images
        // from elsewhere, data: addresses included).
        let svg = qr_svg.find("<svg").map_or("", |start| &qr_svg[start..]);
        Self::new(
            "Turn on two-factor sign-in",
            html! {
                ol {
                    li { "Scan this code with an authenticator app (or type the key below into it)." }
                    li { "Enter the 6-digit code the app shows." }
                }
                figure.qr {
                    div role="img" aria-label="QR code of the key for your authenticator app" {
                        (PreEscaped(svg))
                    }
                    figcaption { "Key: " code #totp-secret { (secret) } }
                }
                form method="post" action="/ui/account/totp/confirm" {
                    (field("code", "Code from the app", "text", "one-time-code", None, true))
                    button type="submit" { "Turn on" }
                }
                p { a href="/ui/account" { "Cancel" } }
            },
        )
    }

    /// The recovery codes, shown once.
    pub fn recovery_codes(codes: &[String]) -> Self {
        Self::new(
            "Save your recovery codes",
            html! {
                p { "Two-factor sign-in is on. If you lose your authenticator app, each of these codes signs you in once. Keep them somewhere safe: they are not shown again." }
                ul.codes #recovery-codes {
                    @for code in codes { li { code { (code) } } }
                }
                p { a href="/ui/account?notice=totp-on" { "Done" } }
            },
        )
    }

    pub fn account(user: &User, factors: &SecondFactors, passkeys: &[PasskeyInfo]) -> Self {
        Self::new(
            "Your account",
            html! {
                p {
                    "Signed in as " strong { (user.username) } ". Your e-mail address is "
                    @if user.verified { "verified." } @else { "not verified yet." }
                }
                section aria-labelledby="profile" {
                    h2 #profile { "Profile" }
                    form method="post" action="/ui/account/profile" {
                        (field("username", "Username", "text", "username", Some(&user.username), true))
                        (field("email", "E-mail", "email", "email", Some(&user.email), true))
                        button type="submit" { "Save" }
                    }
                }
                section aria-labelledby="password" {
                    h2 #password { "Password" }
                    form method="post" action="/ui/account/password" {
                        (field("old_password", "Current password", "password", "current-password", None, true))
                        (field("new_password", "New password", "password", "new-password", None, true))
                        (field("confirm_password", "Confirm new password", "password", "new-password", None, true))
                        button type="submit" { "Change password" }
                    }
                }
                section aria-labelledby="two-factor" {
                    h2 #two-factor { "Two-factor sign-in" }
                    @if factors.totp_since.is_some() {
                        p #totp-status {
                            "On: signing in asks for a code from your authenticator app. "
                            (factors.recovery_codes_left) " recovery codes left."
                        }
                        form method="post" action="/ui/account/totp/disable" {
                            (field("totp_password", "Your password, to turn it off", "password", "current-password", None, true))
                            button type="submit" { "Turn off" }
                        }
                    } @else {
                        p #totp-status { "Off: signing in asks for your password only." }
                        form method="post" action="/ui/account/totp/start" {
                            button type="submit" { "Turn on" }
                        }
                    }
                }
                section aria-labelledby="passkeys" {
                    h2 #passkeys { "Passkeys" }
                    @if passkeys.is_empty() {
                        p { "No passkey yet. A passkey signs you in with this device's screen lock instead of a password." }
                    } @else {
                        ul.passkeys {
                            @for key in passkeys {
                                li {
                                    strong { (key.name) }
                                    " · added " (when(key.created))
                                    @if let Some(used) = key.last_used { " · last used " (when(used)) }
                                    form method="post" action="/ui/account/passkeys/delete" {
                                        input type="hidden" name="passkey" value=(key.id);
                                        button type="submit" aria-label={ "Delete the passkey " (key.name) } { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                    div data-passkey hidden {
                        (field("passkey_name", "Name of the new passkey", "text", "off", None, false))
                        button #passkey-add type="button" { "Add a passkey" }
                        p #passkey-error .error role="alert" hidden {}
                    }
                }
                nav aria-label="Account" {
                    ul {
                        li { a href="/ui/sessions" { "Your sessions" } }
                    }
                }
                form method="post" action="/ui/signout" {
                    button type="submit" { "Sign out" }
                }
            },
        )
        .with_passkeys()
    }

    pub fn sessions(sessions: &[SessionDetails], current: &SessionHandle) -> Self {
        Self::new(
            "Your sessions",
            html! {
                p { "The browsers and apps signed in to your account." }
                table {
                    thead {
                        tr {
                            th scope="col" { "Signed in" }
                            th scope="col" { "Last seen" }
                            th scope="col" { "Address" }
                            th scope="col" { "Browser" }
                            th scope="col" { "Expires" }
                            th scope="col" { span.visually-hidden { "Action" } }
                        }
                    }
                    tbody {
                        @for s in sessions {
                            tr {
                                td { (when(s.created)) }
                                td { (s.last_seen.map(when).unwrap_or_else(|| "—".to_string())) }
                                td { (s.client_ip.as_deref().unwrap_or("—")) }
                                td.agent { (s.user_agent.as_deref().unwrap_or("—")) }
                                td { (when(s.expires)) }
                                td {
                                    @if s.handle == *current {
                                        strong { "This browser" }
                                    } @else {
                                        form method="post" action="/ui/sessions/revoke" {
                                            input type="hidden" name="session" value=(s.handle.as_str());
                                            button type="submit" aria-label={ "Sign out the session signed in " (when(s.created)) " from " (s.client_ip.as_deref().unwrap_or("an unknown address")) ", session " (s.handle.as_str()) } { "Sign out" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                form method="post" action="/ui/sessions/revoke-all" {
                    button type="submit" { "Sign out everywhere" }
                }
                p { a href="/ui/account" { "Back to your account" } }
            },
        )
    }
}

/// What frames a page's body: its title, the error or notice above it, its scripts,
/// and the navigation beside the site's name (the console's).
pub struct Frame<'a> {
    pub title: &'a str,
    pub error: Option<&'a str>,
    pub notice: Option<&'a str>,
    pub scripts: &'a [&'a str],
    pub nav: Option<Markup>,
}

/// A whole page: every hosted page and the console's share it and its stylesheet.
pub fn document(ui: &UiSettings, frame: &Frame<'_>, body: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · " (ui.title) }
                link rel="stylesheet" href="/ui/style.css";
                @if ui.stylesheet.is_some() {
                    link rel="stylesheet" href="/ui/brand.css";
                }
                @for script in frame.scripts {
                    script src=(script) defer {}
                }
            }
            // The tenant, for the passkey buttons' calls (`Micro-Namespace`).
            body.wide[frame.nav.is_some()] data-namespace=[ui.tenant.as_deref()] {
                a.skip href="#main" { "Skip to the content" }
                header {
                    @if ui.logo.is_some() {
                        img.logo src="/ui/logo" alt=(ui.title);
                    } @else {
                        p.site { (ui.title) }
                    }
                    @if let Some(nav) = &frame.nav {
                        (nav)
                    }
                }
                main #main {
                    h1 { (frame.title) }
                    @if let Some(error) = frame.error {
                        p.error role="alert" { (error) }
                    }
                    @if let Some(notice) = frame.notice {
                        p.notice role="status" { (notice) }
                    }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string())
}

/// The "Sign in with a passkey" button (shown by its script where WebAuthn works): for
/// the name typed in the sign-in form, or for a sign-in's second step.
fn passkey_button(challenge: Option<&str>, return_to: Option<&str>) -> Markup {
    html! {
        div data-passkey hidden {
            button #passkey-sign-in type="button" data-challenge=[challenge] data-return-to=[return_to] {
                @if challenge.is_some() { "Use a passkey instead" } @else { "Sign in with a passkey" }
            }
            p #passkey-error .error role="alert" hidden {}
        }
    }
}

/// A labelled input.
pub fn field(
    name: &str,
    label: &str,
    kind: &str,
    autocomplete: &str,
    value: Option<&str>,
    required: bool,
) -> Markup {
    html! {
        div.field {
            label for=(name) { (label) }
            input id=(name) name=(name) type=(kind) autocomplete=(autocomplete)
                value=[value.filter(|_| kind != "password")] required[required];
        }
    }
}

/// A Unix time as `2026-12-03 21:05 UTC`.
pub fn when(unix: i64) -> String {
    match cookie::time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => "—".to_string(),
    }
}
