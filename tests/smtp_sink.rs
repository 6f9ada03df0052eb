//! The test SMTP server (`common::smtp`) against the real `lettre` client the service
//! uses, so the e-mail tests can trust what the sink reports.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use common::smtp::SmtpSink;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn transport(sink: &SmtpSink) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(sink.addr().port())
        .build()
}

/// A verification link like the service's: well over 76 characters, with `=`, `&`,
/// `%` and `-`/`_` in it, all of which quoted-printable must carry through unchanged.
fn long_link() -> String {
    let link = format!(
        "http://127.0.0.1:8080/v1/user/verify?token={}&redirectUrl={}&failureRedirectUrl={}",
        "Zm9vYmFyYmF6cXV4LWFfYi1jX2QtZV9mLWdfaC1pX2o",
        "https%3A%2F%2Fapp.example.com%2Fwelcome%3Fstep%3Dverified%26lang%3Dde%26ref%3Dmail",
        "https%3A%2F%2Fapp.example.com%2Foops%3Freason%3Dexpired%26retry%3D1%26x%3D%3D%3D",
    );
    assert!(link.len() > 200, "{}", link.len());
    link
}

const SUBJECT: &str =
    "Bitte bestätige deine E-Mail-Adresse — ein sehr langer Betreff, der gefaltet wird ✓ 確認";

fn message(to: &str, subject: &str) -> lettre::message::MessageBuilder {
    Message::builder()
        .from("Acme Café <no-reply@localhost>".parse::<Mailbox>().unwrap())
        .to(to.parse::<Mailbox>().unwrap())
        .subject(subject)
}

#[tokio::test]
async fn long_link_and_non_ascii_subject_round_trip() {
    let sink = SmtpSink::start().await;
    let mailer = transport(&sink);
    let link = long_link();
    // ASCII only, so lettre picks the encoding from the line length alone.
    let ascii = format!("Hello,\n\nplease confirm your address:\n{link}\n\nThanks\n");
    // Non-ASCII text with the same long line.
    let unicode = format!("Grüße,\n\nbitte bestätigen:\n{link}\n\n— Acme ✓");

    for (i, text) in [ascii, unicode].into_iter().enumerate() {
        let to = format!("user{i}@example.com");
        let email = message(&to, SUBJECT)
            .header(ContentType::TEXT_PLAIN)
            .body(text.clone())
            .unwrap();
        mailer.send(email).await.expect("sent");

        let mail = sink.next_mail(&to).await;
        assert_eq!(mail.subject, SUBJECT, "raw:\n{}", mail.raw);
        assert_eq!(mail.body, text, "raw:\n{}", mail.raw);
        assert!(mail.body.lines().any(|line| line == link));
        assert_eq!(mail.from, "no-reply@localhost");
        assert_eq!(mail.to, vec![to.clone()]);
        let from = mail.header("From").expect("From header");
        assert!(from.contains("Acme Café"), "{from}");
        // The subject really was encoded on the wire, and the link really was wrapped,
        // so the decoders were exercised.
        assert!(mail.raw.contains("=?utf-8?"), "raw:\n{}", mail.raw);
        assert!(!mail.raw.contains(&link), "raw:\n{}", mail.raw);
    }
    assert_eq!(sink.delivered(), 2);
    assert!(sink.queued().is_empty());
}

#[tokio::test]
async fn every_transfer_encoding_decodes() {
    let sink = SmtpSink::start().await;
    let mailer = transport(&sink);
    let link = long_link();
    // Lines starting with dots are dot-stuffed on the wire; a lone `.` line would end
    // DATA early if stuffing were not undone correctly. Trailing blanks and `=` at the
    // end of a line are the quoted-printable corner cases.
    let short = "Grüße ✓\n.\n..two dots\n.leading dot\ntrailing blanks   \nends with =\n=41 stays";
    let long = format!("{short}\n{link}");
    let ascii = "Plain.\n.\n..two dots\n.leading dot\nends with =\n=41 stays\n";
    // lettre refuses 7bit and 8bit for lines of 76 characters or more, so those two
    // carry only short lines.
    for (encoding, text) in [
        (ContentTransferEncoding::QuotedPrintable, long.as_str()),
        (ContentTransferEncoding::Base64, long.as_str()),
        (ContentTransferEncoding::EightBit, short),
        (ContentTransferEncoding::SevenBit, ascii),
    ] {
        let email = message("enc@example.com", "Test")
            .header(ContentType::TEXT_PLAIN)
            .header(encoding)
            .body(text.to_string())
            .unwrap();
        mailer.send(email).await.expect("sent");
        let mail = sink.next_mail("enc@example.com").await;
        assert_eq!(mail.body, text, "{encoding:?}, raw:\n{}", mail.raw);
        assert_eq!(mail.subject, "Test");
    }
}

#[tokio::test]
async fn multipart_gives_the_plain_text_part() {
    let sink = SmtpSink::start().await;
    let mailer = transport(&sink);
    let link = long_link();
    let plain = format!("Your code: ABCD234567\n{link}\n");
    let html = format!("<p>Your code: <b>ABCD234567</b> <a href=\"{link}\">link</a></p>");
    let email = message("multi@example.com", "Ihr Code")
        .multipart(MultiPart::alternative_plain_html(plain.clone(), html))
        .unwrap();
    mailer.send(email).await.expect("sent");
    let mail = sink.next_mail("multi@example.com").await;
    assert_eq!(mail.body, plain, "raw:\n{}", mail.raw);
    assert_eq!(mail.subject, "Ihr Code");
}

#[tokio::test]
async fn concurrent_messages_are_found_by_recipient() {
    let sink = SmtpSink::start().await;
    let mailer = transport(&sink);
    let send = |to: &'static str, body: &'static str| {
        let email = message(to, &format!("for {to}"))
            .body(body.to_string())
            .unwrap();
        let mailer = mailer.clone();
        async move { mailer.send(email).await }
    };
    let (a, b) = tokio::join!(
        send("alice@example.com", "hello alice"),
        send("bob@example.com", "hello bob")
    );
    a.expect("sent to alice");
    b.expect("sent to bob");

    // Ask in the other order, and with a different case, than they were sent.
    let bob = sink.next_mail("BOB@Example.COM").await;
    assert_eq!(bob.body, "hello bob");
    assert_eq!(bob.subject, "for bob@example.com");
    assert_eq!(sink.queued().len(), 1);
    let alice = sink.next_mail("<alice@example.com>").await;
    assert_eq!(alice.body, "hello alice");
    assert_eq!(sink.delivered(), 2);
    assert!(sink.queued().is_empty());

    // A waiter that starts before the message is sent is woken by it.
    let waiter = sink.next_mail("late@example.com");
    let sender = async {
        tokio::task::yield_now().await;
        send("late@example.com", "late").await.expect("sent late");
    };
    let (late, ()) = tokio::join!(waiter, sender);
    assert_eq!(late.body, "late");

    // Several messages over the pooled connection, one after another.
    for n in 0..3 {
        let body = format!("again {n}");
        let email = message("carol@example.com", "again")
            .body(body.clone())
            .unwrap();
        mailer.send(email).await.expect("sent again");
        assert_eq!(sink.next_mail("carol@example.com").await.body, body);
    }
    assert_eq!(sink.delivered(), 6);
}

#[tokio::test]
async fn url_is_the_plain_smtp_address() {
    let sink = SmtpSink::start().await;
    assert_eq!(
        sink.url(),
        format!("smtp://127.0.0.1:{}?tls=none", sink.addr().port())
    );
    // lettre's own URL parser does not know `tls=none`; the service reads that
    // parameter itself and hands lettre the URL without it, which means plain text.
    let plain = sink.url().replace("?tls=none", "");
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(&plain)
        .expect("url parses")
        .build();
    let email = message("url@example.com", "via url")
        .body("via url".to_string())
        .unwrap();
    mailer.send(email).await.expect("sent");
    assert_eq!(sink.next_mail("url@example.com").await.body, "via url");
}

#[tokio::test]
async fn rejecting_sink_fails_the_delivery() {
    let sink = SmtpSink::start_rejecting().await;
    let mailer = transport(&sink);
    let email = message("nobody@example.com", "rejected")
        .body("never arrives".to_string())
        .unwrap();
    let error = mailer.send(email).await.expect_err("delivery must fail");
    assert!(error.is_permanent(), "{error:?}");
    assert!(error.to_string().contains("rejected"), "{error}");
    assert_eq!(sink.delivered(), 0);
    assert!(sink.queued().is_empty());
}

#[tokio::test]
async fn protocol_basics() {
    let sink = SmtpSink::start().await;
    let stream = tokio::net::TcpStream::connect(sink.addr()).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    let mut exchange = async |command: &str| -> Vec<String> {
        if !command.is_empty() {
            writer.write_all(command.as_bytes()).await.unwrap();
        }
        let mut lines = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            lines.push(line.trim_end().to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return lines;
            }
        }
    };

    assert_eq!(exchange("").await, ["220 localhost ESMTP"]);
    let ehlo = exchange("EHLO test\r\n").await;
    assert!(ehlo.iter().all(|l| l.starts_with("250")), "{ehlo:?}");
    assert!(ehlo.iter().any(|l| l.ends_with("8BITMIME")), "{ehlo:?}");
    assert!(ehlo.iter().any(|l| l.ends_with("SMTPUTF8")), "{ehlo:?}");
    assert!(!ehlo
        .iter()
        .any(|l| l.contains("STARTTLS") || l.contains("AUTH")));
    assert!(exchange("STARTTLS\r\n").await[0].starts_with("502"));
    assert!(exchange("VRFY x\r\n").await[0].starts_with("502"));
    assert!(exchange("DATA\r\n").await[0].starts_with("503"));
    assert!(exchange("noop\r\n").await[0].starts_with("250"));
    assert!(exchange("MAIL FROM:<>\r\n").await[0].starts_with("250"));
    assert!(exchange("RSET\r\n").await[0].starts_with("250"));
    assert!(exchange("RCPT TO:<a@b>\r\n").await[0].starts_with("503"));
    assert!(exchange("HELO test\r\n").await[0].starts_with("250"));
    assert!(exchange("MAIL FROM:<s@x> BODY=8BITMIME\r\n").await[0].starts_with("250"));
    assert!(exchange("RCPT TO:<First@X>\r\n").await[0].starts_with("250"));
    assert!(exchange("RCPT TO:<second@x>\r\n").await[0].starts_with("250"));
    assert!(exchange("DATA\r\n").await[0].starts_with("354"));
    let data = "Subject: =?utf-8?q?caf=C3=A9_?= =?utf-8?B?4pyT?=\r\n\tand more\r\n\r\n..x\r\nbody\r\n.\r\n";
    assert!(exchange(data).await[0].starts_with("250"));
    assert!(exchange("QUIT\r\n").await[0].starts_with("221"));

    let mail = sink.next_mail("first@x").await;
    assert_eq!(mail.from, "s@x");
    assert_eq!(mail.to, ["First@X", "second@x"]);
    assert_eq!(mail.subject, "café ✓\tand more");
    assert_eq!(mail.body, ".x\nbody");
    assert_eq!(
        mail.raw,
        "Subject: =?utf-8?q?caf=C3=A9_?= =?utf-8?B?4pyT?=\r\n\tand more\r\n\r\n.x\r\nbody"
    );
}

#[tokio::test]
async fn a_silent_client_does_not_block_others_and_drop_stops_everything() {
    let sink = SmtpSink::start().await;
    // A client that connects and then says nothing.
    let mut silent = tokio::net::TcpStream::connect(sink.addr()).await.unwrap();
    let mut greeting = [0u8; 64];
    let n = silent.read(&mut greeting).await.unwrap();
    assert!(greeting[..n].starts_with(b"220 "));

    let mailer = transport(&sink);
    let email = message("other@example.com", "still served")
        .body("hi".to_string())
        .unwrap();
    mailer
        .send(email)
        .await
        .expect("sent beside the silent client");
    assert_eq!(sink.next_mail("other@example.com").await.body, "hi");

    // Dropping the sink ends its connections too: the silent client sees the close.
    drop(sink);
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        silent.read(&mut greeting),
    )
    .await
    .expect("connection closed after the sink was dropped");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}
