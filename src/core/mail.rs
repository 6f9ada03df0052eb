//! Sending the service's e-mails over SMTP with lettre, or, with no SMTP server
//! configured, writing them to the log so the flows can be tried locally.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

/// How long one delivery may take, connection included.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid SMTP URL: {0}")]
    Url(String),
    #[error("invalid sender address {0:?}: expected a plain address such as no-reply@example.com")]
    From(String),
    #[error("the message could not be built")]
    Message(#[source] lettre::error::Error),
    #[error("the SMTP server did not accept the message")]
    Delivery(#[source] lettre::transport::smtp::Error),
}

/// One message to send.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub to: &'a str,
    /// The sender's display name; the address is the configured one.
    pub from_name: Option<&'a str>,
    pub subject: &'a str,
    pub body: String,
}

pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Address,
}

impl Mailer {
    /// `smtp_url` None: messages are logged, not sent.
    ///
    /// * `smtp://user:pass@host:587`: STARTTLS, required (the default for `smtp://`);
    /// * `smtp://host:25?tls=opportunistic`: STARTTLS when the server offers it;
    /// * `smtp://host:25?tls=none`: plain text, for a relay on the same host;
    /// * `smtps://user:pass@host:465`: TLS from the first byte.
    pub fn new(smtp_url: Option<&SecretString>, from: &str) -> Result<Self, MailError> {
        let from: Address = from
            .trim()
            .parse()
            .map_err(|_| MailError::From(from.to_string()))?;
        let transport = smtp_url
            .map(|url| transport(url.expose_secret()))
            .transpose()?;
        Ok(Self { transport, from })
    }

    /// Whether messages really leave (an SMTP server is configured).
    pub fn sends(&self) -> bool {
        self.transport.is_some()
    }

    pub async fn send(&self, mail: Outgoing<'_>) -> Result<(), MailError> {
        let Some(transport) = &self.transport else {
            // Deliberately includes the body (the link or code): this mode exists so the
            // flows can be tried without a mail server, and says so loudly.
            tracing::warn!(
                event = "mail_not_sent",
                to = mail.to,
                subject = mail.subject,
                body = %mail.body,
                "mail not sent: no SMTP server is configured (USERS_SMTP_URL)"
            );
            return Ok(());
        };
        let to: Address = mail
            .to
            .parse()
            .map_err(|_| MailError::Message(lettre::error::Error::MissingTo))?;
        let from = Mailbox::new(mail.from_name.map(str::to_string), self.from.clone());
        let message = Message::builder()
            .from(from)
            .to(Mailbox::new(None, to))
            .subject(mail.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body)
            .map_err(MailError::Message)?;
        transport.send(message).await.map_err(MailError::Delivery)?;
        Ok(())
    }
}

/// The transport for a URL, with STARTTLS required unless the URL says otherwise.
fn transport(url: &str) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    // Never echo the URL itself: it may hold a password.
    let mut parsed =
        url::Url::parse(url).map_err(|e| MailError::Url(format!("not a URL ({e})")))?;
    let tls = parsed
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let other: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "tls")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if !other.is_empty() {
        return Err(MailError::Url(
            "the only query parameter understood is tls".into(),
        ));
    }
    let tls = match (parsed.scheme(), tls.as_deref()) {
        ("smtp", None | Some("required")) => Some("required"),
        ("smtp", Some("opportunistic")) => Some("opportunistic"),
        ("smtp", Some("none")) => None,
        ("smtps", None) => None,
        ("smtp", Some(other)) => {
            return Err(MailError::Url(format!(
                "tls={other}: use required, opportunistic or none"
            )))
        }
        ("smtps", Some(_)) => {
            return Err(MailError::Url(
                "smtps:// is always TLS; tls= applies to smtp:// only".into(),
            ))
        }
        (scheme, _) => {
            return Err(MailError::Url(format!(
                "scheme {scheme}: use smtp:// or smtps://"
            )))
        }
    };
    parsed.set_query(None);
    if let Some(tls) = tls {
        parsed.query_pairs_mut().append_pair("tls", tls);
    }
    let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(parsed.as_str())
        .map_err(|e| MailError::Url(e.to_string()))?;
    Ok(builder.timeout(Some(SMTP_TIMEOUT)).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    // The connection pool needs a runtime to be built in.
    #[tokio::test]
    async fn smtp_urls_are_understood_or_refused_clearly() {
        for ok in [
            "smtp://user:pass@mail.example.com:587",
            "smtp://mail.example.com:25?tls=opportunistic",
            "smtp://127.0.0.1:2525?tls=none",
            "smtps://user:pass@mail.example.com:465",
        ] {
            assert!(Mailer::new(Some(&url(ok)), "a@example.com").is_ok(), "{ok}");
        }
        for bad in [
            "http://mail.example.com",
            "smtp://mail.example.com?tls=maybe",
            "smtps://mail.example.com?tls=none",
            "smtp://mail.example.com?x=1",
            "not a url",
        ] {
            let err = Mailer::new(Some(&url(bad)), "a@example.com")
                .err()
                .unwrap_or_else(|| panic!("{bad} should be refused"));
            assert!(matches!(err, MailError::Url(_)), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn errors_never_show_the_smtp_password() {
        let err = Mailer::new(
            Some(&url("smtp://user:hunter2@host?tls=x")),
            "a@example.com",
        )
        .err()
        .unwrap();
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn the_sender_must_be_a_plain_address() {
        assert!(Mailer::new(None, "no-reply@example.com").is_ok());
        assert!(matches!(
            Mailer::new(None, "not an address"),
            Err(MailError::From(_))
        ));
    }
}
