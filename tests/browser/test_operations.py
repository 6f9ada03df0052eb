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
