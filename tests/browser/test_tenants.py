"""Micro.js on a service with tenants (`--tenancy namespace`): `Micro.post(path,
namespace, ...)` sends the namespace as `Micro-Namespace` from a page on another
origin, and each namespace is its own user pool: the same username twice, two accounts,
and one tenant's password and session are nothing in the other. A tenant's hosted pages,
named by `?namespace=` with no default tenant: Micro.requireLogin and Micro.logout with
a namespace, and a passkey added and used on a tenant's pages."""

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from conftest import SmtpSink, _start_service, submit_sign_in, watch
from test_passkeys import authenticator

TENANTS = {"USERS_TENANCY": "namespace", "USERS_TENANTS": "micro,acme"}


@pytest.fixture(scope="module")
def tenanted(work_dir: Path, smtp: SmtpSink):
    """The service on SQLite with the tenants `micro` (what Micro's own snippets name)
    and `acme`."""
    yield from _start_service(
        work_dir, smtp, f"sqlite://{work_dir}/tenants.db", "tenants",
        extra_env=TENANTS,
    )


@pytest.fixture(scope="module")
def tenanted_passkeys(work_dir: Path, smtp: SmtpSink):
    """The same tenants on a service named `localhost` (passkeys need a domain name)."""
    yield from _start_service(
        work_dir, smtp, f"sqlite://{work_dir}/tenants-passkeys.db", "tenants-passkeys",
        host="localhost", extra_env=TENANTS,
    )


def in_tenant(service, path: str, tenant: str) -> re.Pattern:
    """A page's address in `tenant`, with or without other parameters."""
    return re.compile(re.escape(f"{service.url}{path}") + r"\?(.*&)?namespace=" + tenant + "$")


def test_micro_post_names_the_tenant(tenanted, new_context):
    url = tenanted.micro_page("tenants", "")
    watched = watch(new_context().new_page())
    page = watched.page
    page.goto(url)
    username = "tenant" + os.urandom(4).hex()
    created = page.evaluate(
        """name => Promise.all(['micro', 'acme'].map(ns =>
             Micro.post('/users/Users/Create', ns,
                        {username: name, email: name + '@example.com', password: ns + ' password 123'},
                        function () {})))""",
        username,
    )
    assert all(c and c["user"]["username"] == username for c in created), created
    assert created[0]["user"]["id"] != created[1]["user"]["id"]

    # micro's password does not open acme's account; acme's does.
    result = page.evaluate(
        """name => new Promise(resolve => {
             var got = {};
             Micro.post('/users/Users/Login', 'acme', {username: name, password: 'micro password 123'},
                        function (d) { got.success = d; }, function (e) { got.error = e; })
               .then(function () { resolve(got); });
           })""",
        username,
    )
    assert "success" not in result and result["error"]["code"] == 401, result
    session = page.evaluate(
        """name => Micro.post('/users/Users/Login', 'acme', {username: name, password: 'acme password 123'},
                              function () {})""",
        username,
    )["session"]
    # The session is acme's: ReadSession knows it there, and not in micro.
    read = page.evaluate(
        """id => Promise.all(['acme', 'micro'].map(ns => new Promise(resolve =>
             Micro.post('/users/Users/ReadSession', ns, {session_id: id},
                        function (d) { resolve({ok: d}); }, function (e) { resolve({error: e}); }))))""",
        session["id"],
    )
    assert read[0]["ok"]["session"]["user_id"] == created[1]["user"]["id"], read
    assert read[1]["error"]["code"] == 401, read

    # A namespace the service does not hold is refused, not created.
    refused = page.evaluate(
        """() => new Promise(resolve =>
             Micro.post('/users/Users/Create', 'initech', {username: 'x', email: 'x@example.com', password: 'whatever 12345'},
                        function (d) { resolve({ok: d}); }, function (e) { resolve({error: e}); }))"""
    )
    assert refused["error"]["code"] == 400 and "Micro-Namespace" in refused["error"]["detail"], refused
    assert watched.errors == []


def test_require_login_signs_in_on_the_tenants_pages(tenanted, new_context):
    service = tenanted
    name = "pages" + os.urandom(4).hex()
    for tenant in ("micro", "acme"):
        created = service.post("/users/Users/Create", {
            "username": name, "email": f"{name}@example.com", "password": f"{tenant} password 123",
        }, {"Micro-Namespace": tenant})
        assert created.status == 200, created
    app = service.micro_page("tenant-app", """
        Micro.requireLogin(function (session) {
          document.getElementById('out').textContent = 'signed in as ' + session.user.username;
        }, 'acme');""")
    watched = watch(new_context().new_page())
    page = watched.page
    # Signed out: to acme's sign-in page, which names acme in its every form and link.
    page.goto(app)
    page.wait_for_url(in_tenant(service, "/ui/signin", "acme"))
    action = page.locator("form").first.get_attribute("action")
    assert action == "/ui/signin?namespace=acme", action
    # micro's password is not acme's.
    submit_sign_in(page, name, "micro password 123")
    expect(page.get_by_role("alert")).to_contain_text("incorrect")
    submit_sign_in(page, name, "acme password 123")
    page.wait_for_url(app)
    expect(page.locator("#out")).to_have_text(f"signed in as {name}")
    # The cookie's session is acme's: Micro.session sees it in acme, not in micro.
    seen = page.evaluate("""() => Promise.all(['acme', 'micro'].map(ns =>
        new Promise(resolve => Micro.session(function (s) { resolve(s && s.user.username); }, ns))))""")
    assert seen == [name, None], seen
    page.evaluate("() => new Promise(resolve => Micro.logout(resolve, 'acme'))")
    seen = page.evaluate("() => new Promise(resolve => Micro.session(function (s) { resolve(s); }, 'acme'))")
    assert seen is None
    assert watched.errors == []


def test_a_passkey_on_a_tenants_pages(tenanted_passkeys, new_context):
    service = tenanted_passkeys
    name = "pk" + os.urandom(4).hex()
    page = new_context().new_page()
    authenticator(page)
    # Signed up on acme's page: the account page is acme's.
    page.goto(f"{service.url}/ui/signup?namespace=acme")
    page.get_by_label("Username").fill(name)
    page.get_by_label("E-mail").fill(f"{name}@example.com")
    page.get_by_label("Password", exact=True).fill("acme password 123")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(in_tenant(service, "/ui/account", "acme"))
    # Without a namespace, and no default tenant, the page names no tenant.
    refused = page.goto(f"{service.url}/ui/account")
    assert refused.status == 400, refused
    page.goto(f"{service.url}/ui/account?namespace=acme")
    page.get_by_label("Name of the new passkey").fill("Laptop")
    page.get_by_role("button", name="Add a passkey").click()
    page.wait_for_url(in_tenant(service, "/ui/account", "acme"))
    expect(page.get_by_role("status")).to_contain_text("Your passkey is added")
    found = service.admin("/users/Users/Search", {"username": name})
    assert found.status == 400, found  # the admin key names no tenant
    listed = service.post("/users/Users/Search", {"username": name},
                          {"Authorization": f"Bearer {service.admin_key}", "Micro-Namespace": "acme"})
    [user] = listed.body["users"]
    passkeys = service.post("/users/Users/ListPasskeys", {"user_id": user["id"]},
                            {"Authorization": f"Bearer {service.admin_key}", "Micro-Namespace": "acme"})
    assert [p["name"] for p in passkeys.body["passkeys"]] == ["Laptop"], passkeys

    # Signed out, then in again with the passkey alone, on acme's pages.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(in_tenant(service, "/ui/signin", "acme"))
    page.get_by_label("Username or e-mail").fill(name)
    page.get_by_role("button", name="Sign in with a passkey").click()
    page.wait_for_url(in_tenant(service, "/ui/account", "acme"))
    expect(page.get_by_role("heading", name="Your account")).to_be_visible()
