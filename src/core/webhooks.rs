//! Webhooks: events announced to the operator's endpoints, signed as the Standard
//! Webhooks specification says (<https://www.standardwebhooks.com>).
//!
//! Each delivery is a POST of the event's JSON payload with three headers:
//! `webhook-id` (the message's id, the same on every retry, so that receivers can drop
//! duplicates), `webhook-timestamp` (seconds since the epoch, of this attempt) and
//! `webhook-signature` (`v1,` and the base64 HMAC-SHA256, under the shared secret, of
//! `{id}.{timestamp}.{body}`). The messages wait in the outbox with the e-mails, queued
//! in the transaction of the change they announce; any 2xx answer is a delivery.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a webhook secret was refused.
#[derive(Debug, thiserror::Error)]
#[error("the webhook secret must be `whsec_` followed by base64 (24 to 64 bytes), as Standard Webhooks secrets are")]
pub struct BadSecret;

/// Why a delivery failed; it is tried again.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the endpoint could not be reached")]
    Unreachable(#[source] reqwest::Error),
    #[error("the endpoint answered {0}")]
    Refused(u16),
}

/// Signs and posts webhook messages.
#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    /// HMAC-SHA256 keyed with the secret, cloned for each signature.
    mac: Hmac<Sha256>,
    /// The tenant whose messages these are, named in their ids.
    tenant: Option<String>,
}

impl WebhookSender {
    /// With the secret as Standard Webhooks writes it: `whsec_` and base64.
    pub fn new(secret: &str) -> Result<Self, BadSecret> {
        let encoded = secret.trim().strip_prefix("whsec_").ok_or(BadSecret)?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| BadSecret)?;
        if !(24..=64).contains(&key.len()) {
            return Err(BadSecret);
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| BadSecret)?;
        let key = SecretSlice::from(key);
        let mac = Hmac::<Sha256>::new_from_slice(key.expose_secret()).map_err(|_| BadSecret)?;
        Ok(Self {
            client,
            mac,
            tenant: None,
        })
    }

    /// The sender of `tenant`'s messages: their ids name it, so that the ids of two
    /// tenants' messages (each tenant's outbox counts its own) never meet at a receiver
    /// that drops duplicates by id.
    pub fn for_tenant(self, tenant: Option<&str>) -> Self {
        Self {
            tenant: tenant.map(str::to_owned),
            ..self
        }
    }

    /// The id of outbox message `outbox_id`, the same on every retry: `msg_users_<id>`,
    /// or with tenants `msg_users_<tenant>_<id>`.
    pub fn message_id(&self, outbox_id: i64) -> String {
        match &self.tenant {
            Some(tenant) => format!("msg_users_{tenant}_{outbox_id}"),
            None => format!("msg_users_{outbox_id}"),
        }
    }

    /// The `webhook-signature` value of `body` sent as message `id` at `timestamp`.
    pub fn signature(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }

    /// One attempt: POSTs `body` to `url` as message `id`, signed at `timestamp`.
    pub async fn send(
        &self,
        url: &str,
        id: &str,
        timestamp: i64,
        body: String,
    ) -> Result<(), DeliveryError> {
        let signature = self.signature(id, timestamp, &body);
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(DeliveryError::Unreachable)?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Refused(response.status().as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's own example: secret, id, timestamp, payload and signature.
    #[test]
    fn signs_as_the_specification_s_example() {
        let sender = WebhookSender::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sender.signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_whsec_and_base64() {
        assert!(WebhookSender::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSender::new("whsec_not base64!").is_err());
        assert!(WebhookSender::new("whsec_c2hvcnQ=").is_err(), "too short");
    }
}
