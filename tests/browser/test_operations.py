"""Operations seen from outside, with the Prometheus project's own tools: /metrics
scraped and parsed by prometheus_client's text parser, on both stores."""

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import Service, _opener


def scrape(service: Service, key: str = None):
    request = urllib.request.Request(service.url + "/metrics")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with _opener.open(request, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families, name: str, sample: str, **labels) -> float:
    for s in families[name].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample} {labels} in {families[name].samples}")


def test_metrics_parse_with_the_prometheus_parser_and_count_a_sign_in(any_service: Service):
    before = scrape(any_service, any_service.admin_key)
    # Families as the parser names them (a counter's without its _total), with types.
    expected = {
        "users_http_requests": "counter",
        "users_http_request_duration_seconds": "histogram",
        "users_argon2_waiting": "gauge",
        "users_argon2_running": "gauge",
        "users_argon2_wait_seconds": "histogram",
        "users_db_connections": "gauge",
        "users_db_acquire_wait_seconds": "histogram",
        "users_rate_limited": "counter",
        "users_lockouts": "counter",
        "users_sessions_created": "counter",
        "users_sessions_ended": "counter",
        "users_mail_queued": "gauge",
        "users_mail_sent": "counter",
        "users_mail_failed": "counter",
        "users_mail_dead": "counter",
        "users_build_info": "gauge",
    }
    for name, kind in expected.items():
        assert name in before, f"{name} missing from {sorted(before)}"
        assert before[name].type == kind, f"{name}: {before[name].type}"
        assert before[name].documentation, f"{name} has no HELP"

    created = value(before, "users_sessions_created", "users_sessions_created_total", method="password")
    user = any_service.new_user("scraped")
    session = any_service.login(user)
    assert any_service.post("/users/Users/Logout", {"session_id": session}).status == 200

    after = scrape(any_service, any_service.admin_key)
    assert value(after, "users_sessions_created", "users_sessions_created_total", method="password") == created + 1
    assert value(after, "users_sessions_ended", "users_sessions_ended_total", cause="logout") >= 1
    assert value(after, "users_http_requests", "users_http_requests_total",
                 family="micro", method="Login", status="200") >= 1
    assert value(after, "users_build_info", "users_build_info") == 1


def test_metrics_need_the_admin_key(service: Service):
    try:
        with _opener.open(service.url + "/metrics", timeout=30):
            raise AssertionError("answered without the key")
    except urllib.error.HTTPError as error:
        assert error.code == 401
        assert error.headers["WWW-Authenticate"] == "Bearer"


# ---- Webhooks, verified with the Standard Webhooks library --------------------------------

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook

from conftest import _postgres_database, _start_service

SECRET = "whsec_" + __import__("base64").b64encode(b"a webhook secret of 32 bytes!!!!").decode()


class Receiver:
    """An endpoint that refuses each message's first two deliveries (500) and takes the
    third; it keeps every attempt."""

    def __init__(self) -> None:
        self.attempts = []  # (headers, body, status)
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.changed:
                    tries = sum(1 for h, _, _ in receiver.attempts if h["webhook-id"] == headers["webhook-id"])
                    status = 500 if tries < 2 else 204
                    receiver.attempts.append((headers, body, status))
                    receiver.changed.notify_all()
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def delivered(self, event_type: str, user_id: str, timeout: float = 60):
        """Waits for the accepted delivery of `event_type` about `user_id`; returns every
        attempt at that message."""
        def find():
            for headers, body, status in self.attempts:
                payload = json.loads(body)
                if status == 204 and payload["type"] == event_type and payload["data"]["user_id"] == user_id:
                    return [a for a in self.attempts if a[0]["webhook-id"] == headers["webhook-id"]]
            return None
        with self.changed:
            found = self.changed.wait_for(find, timeout=timeout)
        assert found, f"no accepted {event_type} for {user_id}: {self.attempts}"
        return found


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def webhooks(request, work_dir, smtp):
    """The service, on each store, announcing its changes to a Receiver."""
    receiver = Receiver()
    env = {
        "USERS_WEBHOOK_URLS": receiver.url,
        "USERS_WEBHOOK_SECRET": SECRET,
        "USERS_WEBHOOK_RETRY_DELAY": "1",
    }
    name = f"webhooks-{request.param}"
    try:
        if request.param == "sqlite":
            for service in _start_service(work_dir, smtp, f"sqlite://{work_dir}/webhooks.db", name, extra_env=env):
                yield service, receiver
        else:
            for url in _postgres_database("webhooks"):
                for service in _start_service(work_dir, smtp, url, name, extra_env=env):
                    yield service, receiver
    finally:
        receiver.server.shutdown()


def test_webhooks_are_signed_retried_with_the_same_id_and_verified_by_the_standard_library(webhooks):
    service, receiver = webhooks
    verifier = Webhook(SECRET)
    user = service.new_user("hooked")
    session = service.login(user)
    assert service.post("/users/Users/Logout", {"session_id": session}).status == 200
    assert service.admin("/users/Users/Delete", {"id": user.id}).status == 200

    for event_type in ["user.created", "session.created", "session.ended", "user.deleted"]:
        attempts = receiver.delivered(event_type, user.id)
        # Refused twice, accepted the third time, always as the same message.
        assert [status for _, _, status in attempts] == [500, 500, 204], event_type
        assert len({h["webhook-id"] for h, _, _ in attempts}) == 1
        for headers, body, _ in attempts:
            payload = verifier.verify(body, headers)
            assert payload["type"] == event_type
            assert payload["data"]["user_id"] == user.id
        # A body altered on the way fails the check.
        headers, body, _ = attempts[-1]
        with pytest.raises(Exception):
            verifier.verify(body.replace(user.id, "someone-else"), headers)

    created = json.loads(receiver.delivered("user.created", user.id)[-1][1])
    assert created["data"]["user"]["username"] == user.username
    assert created["data"]["actor"] == "self"
    assert "password" not in json.dumps(created)
    deleted = json.loads(receiver.delivered("user.deleted", user.id)[-1][1])
    assert deleted["data"]["actor"] == "admin"
