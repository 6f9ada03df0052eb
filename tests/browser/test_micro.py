"""Micro.js from a web page: the seed's snippets unchanged, requireLogin's round trip
through the sign-in page, the rest of the script's API, and what a page may not do."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from conftest import (
    HERE,
    account_url,
    ROOT,
    http_post,
    session_cookie,
    sign_in,
    signed_in_context,
    submit_sign_in,
    ui_session,
    watch,
)

SNIPPETS = HERE / "snippets"
SEED = ROOT.parent / "shared" / "seed" / "000_741f87d48e3bf53a.txt"
SEED_SRC = "https://web.m3o.com/assets/micro.js"
METHODS = ["Create", "Delete", "Login", "Logout", "Read", "ReadSession", "Search", "Update", "UpdatePassword"]


def snippet(method: str) -> tuple[str, str, dict]:
    """The snippet's HTML, the path it posts to and the body it sends."""
    html = (SNIPPETS / f"{method}.html").read_text()
    path = re.search(r'Micro\.post\(\s*"([^"]+)"', html).group(1)
    body = json.loads(re.search(r'"micro",\s*(\{.*?\}),\s*function', html, re.S).group(1))
    return html, path, body


def test_snippets_are_the_seeds():
    """The stored snippets are the seed's "cURL" section, byte for byte (when the seed
    is beside the repository, as on the developers' machines and CI)."""
    if not SEED.exists():
        pytest.skip(f"{SEED} is not there")
    seed = SEED.read_text()
    blocks = dict(re.findall(r"### Users (\w+)\n.*?```html\n(.*?)```", seed[seed.index("## cURL"):], re.S))
    assert sorted(blocks) == sorted(METHODS)
    for method in METHODS:
        assert (SNIPPETS / f"{method}.html").read_text() == blocks[method], method


@pytest.mark.parametrize("method", METHODS)
def test_seed_snippet(method, service, new_context):
    """Each snippet, unchanged but for its script's address, runs on the listed origin
    once the browser has signed in: it posts exactly its body with `Micro-Namespace:
    micro`, and the page reads the answer (a Micro error for the placeholder values,
    which micro.js logs as the snippet has no error callback); nothing throws."""
    html, path, body = snippet(method)
    assert html.count(SEED_SRC) == 1
    page_html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Users {method}</title>'
        f"</head><body>\n{html.replace(SEED_SRC, service.url + '/micro.js')}</body></html>"
    )
    url = service.pages.page(f"snippet-{method}.html", page_html)

    user = service.new_user("snip")
    context = signed_in_context(new_context, service, user)
    watched = watch(context.new_page())
    page = watched.page
    posts = []
    page.on("request", lambda r: posts.append(r) if r.method == "POST" and r.url == service.url + path else None)

    with page.expect_response(lambda r: r.url == service.url + path and r.request.method == "POST") as info:
        page.goto(url)
    response = info.value
    assert len(posts) == 1, [p.url for p in posts]
    request = posts[0]
    assert request.post_data_json == body
    headers = request.all_headers()
    assert headers.get("micro-namespace") == "micro"
    assert headers.get("content-type") == "application/json"

    answer = response.json()
    if method == "Logout":
        # Logging out a session that does not exist answers {} (docs/api.md): the success
        # callback runs, and the browser's own session is untouched.
        assert response.status == 200, answer
        assert answer == {}
        expect_console(page, watched, "log", "Success.")
        assert ui_session(context, service).status == 200
    else:
        assert 400 <= response.status < 500, (response.status, answer)
        assert set(answer) == {"id", "code", "detail", "status"}, answer
        assert answer["code"] == response.status
        # micro.js read the error through CORS and reported it, detail included.
        expect_console(page, watched, "error", answer["detail"])
        assert not any(text == "Success." for _, text in watched.console)
    assert watched.errors == []


def expect_console(page, watched, kind: str, text: str) -> None:
    """Waits until the page has logged a console message of `kind` containing `text`."""
    def seen() -> bool:
        return any(k == kind and text in t for k, t in watched.console)

    if not seen():
        page.wait_for_event("console", predicate=lambda m: m.type == kind and text in m.text)
    assert seen(), watched.console


def test_require_login_round_trip(service, new_context):
    """requireLogin on the listed origin sends a signed-out browser to /ui/signin; once
    signed in, the browser comes back to the page and the callback runs."""
    user = service.new_user("req")
    url = service.micro_page(
        "require-login",
        """Micro.requireLogin(function (session) {
             document.getElementById("out").textContent =
               "signed in as " + session.user.username + " <" + session.user.email + ">";
           });""",
    )
    context = new_context()
    watched = watch(context.new_page())
    page = watched.page
    page.goto(url)
    page.wait_for_url(re.compile(re.escape(f"{service.url}/ui/signin?")))
    assert page.url == f"{service.url}/ui/signin?return_to={quote_all(url)}"
    expect(page.locator("#out")).to_have_count(0)
    submit_sign_in(page, user.username, user.password)
    page.wait_for_url(url)
    expect(page.locator("#out")).to_have_text(f"signed in as {user.username} <{user.email}>")
    assert page.evaluate("Micro.user()") == {"id": user.id, "username": user.username, "email": user.email}
    assert watched.errors == []


def test_return_to_another_origin_is_not_followed(service, new_context):
    """Signing in with a return_to on an origin the service does not trust ends on the
    account page, not on that origin (no open redirect)."""
    user = service.new_user("ret")
    elsewhere = service.micro_page("elsewhere", "", origin=service.foreign)
    page = new_context().new_page()
    page.goto(f"{service.url}/ui/signin?return_to={quote_all(elsewhere)}")
    submit_sign_in(page, user.username, user.password)
    page.wait_for_url(account_url(service))
    expect(page.get_by_role("heading", name="Your account")).to_be_visible()


def quote_all(text: str) -> str:
    """encodeURIComponent, as micro.js writes return_to."""
    return quote(text, safe="-_.!~*'()")


def test_micro_session_user_logout(service, new_context):
    """Micro.session answers null signed out and the session signed in (never its id),
    Micro.user the session's user, Micro.logout ends the browser's session; Micro.post
    answers through its Promise and calls the error callback with the Micro error."""
    user = service.new_user("api")
    url = service.micro_page("api", "")
    context = new_context()
    watched = watch(context.new_page())
    page = watched.page

    page.goto(url)
    assert page.evaluate("Micro.base") == service.url
    assert page.evaluate("new Promise(r => Micro.session(r))") is None
    assert page.evaluate("Micro.user()") is None

    sign_in(page, service, user.username, user.password)
    page.goto(url)
    session = page.evaluate("new Promise(r => Micro.session(r))")
    assert session["user"] == {"id": user.id, "username": user.username, "email": user.email}
    assert re.fullmatch(r"[0-9]+", session["expires"]), session
    assert session_cookie(context, service) not in json.dumps(session)
    assert page.evaluate("document.cookie").find("users_session") == -1
    assert page.evaluate("Micro.user()")["id"] == user.id

    # Micro.post: the Promise answers the data; an error goes to the error callback.
    data = page.evaluate(
        "id => Micro.post('/users/Users/Read', 'micro', {id: id}, function () {})", user.id
    )
    assert data["user"]["username"] == user.username
    result = page.evaluate(
        """() => new Promise(resolve => {
             var got = {};
             Micro.post('/users/Users/Read', 'micro', {id: ''}, function (d) { got.success = d; },
                        function (e) { got.error = e; })
               .then(function (value) { got.value = value; resolve(got); });
           })"""
    )
    assert "success" not in result and result["value"] is None
    error = result["error"]
    assert 400 <= error["code"] < 500 and error["id"] == "users.Read", result
    assert set(error) == {"id", "code", "detail", "status"}, result

    # A callback that throws is the page's own error; micro.js still answers.
    with page.expect_event("pageerror") as thrown:
        value = page.evaluate(
            "id => Micro.post('/users/Users/Read', 'micro', {id: id}, function () { throw new Error('page bug'); })",
            user.id,
        )
    assert "page bug" in str(thrown.value)
    assert value["user"]["id"] == user.id
    watched.errors.clear()

    page.evaluate("new Promise(r => Micro.logout(r))")
    assert page.evaluate("Micro.user()") is None
    assert page.evaluate("new Promise(r => Micro.session(r))") is None
    assert ui_session(context, service).status == 401
    assert watched.errors == []


def test_unlisted_origin_cannot_use_the_cookie(service, new_context):
    """A page on an origin that --cors-origins does not list gets nothing with the
    browser's cookie: its credentialed fetch is refused by CORS, micro.js reports a
    network error instead of throwing, a no-preflight POST changes nothing, and the
    same request replayed without a browser, cookie and Origin included, gets 403."""
    user = service.new_user("cors")
    context = signed_in_context(new_context, service, user)
    cookie = session_cookie(context, service)
    url = service.micro_page("foreign", "", origin=service.foreign)
    watched = watch(context.new_page())
    page = watched.page
    page.goto(url)
    assert page.evaluate("location.origin") == service.foreign.url

    outcome = page.evaluate(
        """([base, id]) => fetch(base + "/users/Users/Read", {
             method: "POST", credentials: "include",
             headers: {"Content-Type": "application/json"}, body: JSON.stringify({id: id})
           }).then(r => "resolved " + r.status, e => "rejected " + e.name)""",
        [service.url, user.id],
    )
    assert outcome == "rejected TypeError"

    # A "simple" request goes out without a preflight, cookie and all: the service must
    # refuse it (the page cannot read the answer; the account must be unchanged).
    update = service.url + "/users/Users/Update"
    with page.expect_event("requestfailed", predicate=lambda r: r.url == update) as failed:
        outcome = page.evaluate(
            """([url, id]) => fetch(url, {
                 method: "POST", credentials: "include",
                 headers: {"Content-Type": "text/plain"}, body: JSON.stringify({id: id, username: "forged"})
               }).then(r => "resolved " + r.status, e => "rejected " + e.name)""",
            [update, user.id],
        )
    assert outcome == "rejected TypeError"
    assert failed.value.method == "POST"
    assert service.read(user.id).body["user"]["username"] == user.username

    error = page.evaluate(
        """id => new Promise(resolve => Micro.post("/users/Users/Read", "micro", {id: id},
             function () { resolve("success"); }, resolve))""",
        user.id,
    )
    assert error["id"] == "micro.js" and error["code"] == 0, error
    assert watched.errors == []

    # The same request from Python, no CORS in the way: refused by the service.
    replay = {"Cookie": f"users_session={cookie}"}
    refused = http_post(f"{service.url}/users/Users/Read", {"id": user.id}, {**replay, "Origin": service.foreign.url})
    assert refused.status == 403, refused
    assert refused.body["code"] == 403
    # ... while the listed origin, with the same cookie, is let in.
    allowed = http_post(f"{service.url}/users/Users/Read", {"id": user.id}, {**replay, "Origin": service.pages.url})
    assert allowed.status == 200, allowed


def test_a_session_acts_for_its_own_user_only(service, new_context):
    """User A's session cannot Read, Update, Delete or change the password of user B,
    from the listed origin's page with micro.js nor with `Authorization: Bearer`."""
    a, b = service.new_user("alice"), service.new_user("bob")
    before = service.read(b.id).body
    context = signed_in_context(new_context, service, a)
    watched = watch(context.new_page())
    page = watched.page
    page.goto(service.micro_page("cross-user", ""))

    attempts = {
        "Read": {"id": b.id},
        "Update": {"id": b.id, "username": "taken-over", "email": "taken@example.com"},
        "UpdatePassword": {"user_id": b.id, "old_password": b.password,
                           "new_password": "new-harbor-lantern-4", "confirm_password": "new-harbor-lantern-4"},
        "Delete": {"id": b.id},
    }
    for method, body in attempts.items():
        got = page.evaluate(
            """([path, body]) => new Promise(resolve => Micro.post(path, "micro", body,
                 function (d) { resolve({success: d}); }, function (e) { resolve({error: e}); }))""",
            [f"/users/Users/{method}", body],
        )
        assert "error" in got and got["error"]["code"] == 403, (method, got)
    own = page.evaluate(
        "id => Micro.post('/users/Users/Read', 'micro', {id: id}, function () {})", a.id
    )
    assert own["user"]["id"] == a.id
    assert watched.errors == []

    bearer = {"Authorization": f"Bearer {service.login(a)}"}
    for method, body in attempts.items():
        answer = service.post(f"/users/Users/{method}", body, bearer)
        assert answer.status == 403, (method, answer.status, answer.body)
    assert service.post("/users/Users/Read", {"id": a.id}, bearer).status == 200

    assert service.read(b.id).body == before
    assert service.post("/users/Users/Login", {"username": b.username, "password": b.password}).status == 200
