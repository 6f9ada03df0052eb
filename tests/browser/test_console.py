"""The admin console (/admin) in Chromium, on both stores: an operator signs in with the
admin key (which never appears in an address or a cookie), finds a user, and changes
what the console offers; no other page can drive it; axe-core finds no serious
violation on its pages; screenshots of it go to docs/screenshots/."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect

from conftest import Service, assert_accessible, save_screenshot, signed_in_context, ui_session


def console(new_context, service: Service, **options) -> tuple[BrowserContext, Page, list]:
    """A browser signed in to the console through its form; answers its context, its
    page and every address the context requested."""
    context = new_context(**options)
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    page = context.new_page()
    page.goto(f"{service.url}/admin")
    expect(page.get_by_role("heading", name="Admin console")).to_be_visible()
    page.get_by_label("Admin key").fill(service.admin_key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{service.url}/admin/users")
    return context, page, requested


def open_user(page: Page, service: Service, username: str) -> None:
    """Finds `username` with the search form and opens their page."""
    page.get_by_label("Find a user by id, username or e-mail").fill(username)
    page.get_by_role("button", name="Find").click()
    page.get_by_role("link", name=username, exact=True).click()
    expect(page.get_by_role("heading", name=f"User {username}")).to_be_visible()


def notice(page: Page) -> Locator:
    return page.get_by_role("status")


def test_an_operator_runs_an_account_from_the_console(any_service, new_context):
    service = any_service
    user = service.new_user("console")
    # The user is signed in in their own browser.
    users_browser = signed_in_context(new_context, service, user)
    context, page, requested = console(new_context, service)

    cookies = {c["name"]: c for c in context.cookies(f"{service.url}/admin/users")}
    cookie = cookies["users_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    assert service.admin_key not in cookie["value"]
    assert page.evaluate("document.cookie") == "", "no script sees the console's cookie"

    open_user(page, service, user.username)
    user_page = page.url
    assert re.search(re.escape(user.id) + "$", user_page)

    # Its browser's session is listed; ending every session signs that browser out.
    expect(page.locator("#session-list tbody tr")).to_have_count(1)
    page.get_by_role("button", name="End every session").click()
    expect(notice(page)).to_have_text("Every session of this user is ended.")
    expect(page.locator("#sessions-status")).to_have_text("No live session.")
    assert ui_session(users_browser, service).status == 401

    # The profile.
    new_email = f"moved-{user.email}"
    page.get_by_role("textbox", name="E-mail").fill(new_email)
    page.get_by_label("Profile fields (one key=value per line)").fill("plan=pro\nteam=blue")
    page.get_by_role("button", name="Save the profile").click()
    expect(notice(page)).to_have_text("The changes are saved.")
    read = service.read(user.id).body["user"]
    assert read["email"] == new_email and read["profile"] == {"plan": "pro", "team": "blue"}
    # A change the API refuses is shown, and nothing changes.
    page.get_by_role("textbox", name="E-mail").fill("not an address")
    page.get_by_role("textbox", name="E-mail").evaluate("e => e.type = 'text'")  # past the browser's own check
    page.get_by_role("button", name="Save the profile").click()
    expect(page.get_by_role("alert")).to_contain_text("email")
    assert service.read(user.id).body["user"]["email"] == new_email

    # The verification e-mail, again, to the new address.
    page.goto(user_page)
    page.get_by_role("button", name="Send the verification e-mail again").click()
    expect(notice(page)).to_have_text("A new verification e-mail is on its way.")
    assert "/v1/user/verify?token=" in service.smtp.wait_for(new_email).body

    # A lockout, and the unlock.
    for _ in range(5):
        answer = service.post("/users/Users/Login", {"username": user.username, "password": "wrong-password-1"})
        assert answer.status == 401, answer.body
    page.reload()
    expect(page.locator("#lockout-status")).to_contain_text("Locked out until")
    page.get_by_role("button", name="Unlock and forget the failed checks").click()
    expect(notice(page)).to_contain_text("not locked out")
    expect(page.locator("#lockout-status")).to_contain_text("Not locked out.")
    service.login(user)

    # The audit trail shows what the console did, as the admin.
    events = page.locator("#event-list tbody tr")
    expect(events.filter(has_text="account.updated")).to_have_count(1)
    expect(events.filter(has_text="account.updated")).to_contain_text("admin")
    expect(events.filter(has_text="session.ended").first).to_contain_text("admin")

    # Delete, confirmed by typing the username.
    page.get_by_role("link", name="Delete this user…").click()
    page.get_by_label("Type the username to confirm").fill("someone-else")
    page.get_by_role("button", name="Delete the user").click()
    expect(page.get_by_role("alert")).to_contain_text("username")
    assert service.read(user.id).status == 200
    page.get_by_label("Type the username to confirm").fill(user.username)
    page.get_by_role("button", name="Delete the user").click()
    page.wait_for_url(f"{service.url}/admin/users?notice=deleted")
    expect(notice(page)).to_have_text("The user is deleted.")
    assert service.read(user.id).status == 404

    # Signing out of the console.
    page.get_by_role("button", name="Sign out of the console").click()
    expect(page.get_by_role("heading", name="Admin console")).to_be_visible()
    page.goto(f"{service.url}/admin/users")
    expect(page.get_by_label("Admin key")).to_be_visible()

    assert requested, "the context's requests were seen"
    for url in requested:
        assert url.startswith(service.url + "/"), f"loaded from elsewhere: {url}"
        assert service.admin_key not in url


def test_a_wrong_key_is_refused(service, new_context):
    page = new_context().new_page()
    page.goto(f"{service.url}/admin")
    page.get_by_label("Admin key").fill("not-the-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That is not the admin key.")
    assert page.context.cookies(f"{service.url}/admin") == []


@pytest.mark.parametrize("where", ["pages", "foreign"])
def test_no_other_page_can_drive_the_console(where, service, new_context):
    """A page of another origin, even one trusted with users' session cookies, posts a
    form to the console of a browser signed in to it: refused, and nothing changes."""
    user = service.new_user("target")
    context, page, _ = console(new_context, service)
    origin = getattr(service, where)
    attack = origin.page(
        f"console-{where}-{user.username}.html",
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Win a prize</title></head>'
        f'<body><main><form method="post" action="{service.url}/admin/users/{user.id}/delete">'
        f'<input type="hidden" name="confirm" value="{user.username}">'
        '<button type="submit">Claim</button></form></main></body></html>',
    )
    page.goto(attack)
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Claim").click()
    assert navigation.value.status == 403
    if where == "pages":
        # An origin allowed to call the API with cookies still cannot drive the console.
        expect(page.get_by_role("alert")).to_contain_text("own pages")
    else:
        # Any other origin is refused before the console, as for every other route.
        expect(page.locator("body")).to_contain_text("origin are not allowed")
    assert service.read(user.id).status == 200


# name -> path (after {user} is replaced by the user's id)
PAGES = {
    "signin": "/admin",
    "users": "/admin/users",
    "search": "/admin/users?q={username}",
    "user": "/admin/users/{user}",
    "delete": "/admin/users/{user}/delete",
}


def open_console_page(name, service, new_context, username=None, **options) -> Page:
    user = service.new_user("look", username=username)
    # Something to show: a session, a profile, a failed sign-in.
    service.login(user)
    service.admin("/users/Users/Update", {"id": user.id, "profile": {"plan": "pro"}})
    service.post("/users/Users/Login", {"username": user.username, "password": "wrong-password-1"})
    if name == "signin":
        page = new_context(**options).new_page()
    else:
        _, page, _ = console(new_context, service, **options)
    path = PAGES[name].format(user=user.id, username=user.username)
    page.goto(service.url + path)
    assert page.url == service.url + path, f"{path} went to {page.url}"
    return page


@pytest.mark.parametrize("name", list(PAGES))
def test_console_accessibility(name, service, new_context):
    # The console's Content-Security-Policy would rightly refuse the injected axe-core.
    page = open_console_page(name, service, new_context, bypass_csp=True)
    assert_accessible(page, PAGES[name])


@pytest.mark.parametrize("name", ["search", "user"])
def test_console_screenshot(name, service, new_context):
    # A fixed name, so that the pictures change only when the pages (or the dates) do.
    page = open_console_page(name, service, new_context, username=f"grace-{name}")
    save_screenshot(page, f"console-{name}")
