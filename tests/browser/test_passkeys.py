"""Passkeys in headless Chromium with the DevTools Protocol's virtual authenticator
(WebAuthn.addVirtualAuthenticator), on SQLite and on PostgreSQL: registration on the
account page, sign-in without a password (with a name, and without one), a sign-in by
name that answers alike with and without passkeys, a sign-in that another start for
the same name does not withdraw, sign-in as the second step, a cloned credential's
counter refused, and deletion."""

from __future__ import annotations

import json
import re
import os
import subprocess
import tempfile

import pyotp
from playwright.sync_api import expect

from conftest import account_url, previous_totp_code, sign_in, submit_sign_in


def authenticator(page) -> tuple:
    """A platform authenticator with user verification (a device's screen lock) for the
    page's browser; answers the DevTools session and its id."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True,
    }})
    return cdp, added["authenticatorId"]


def add_passkey(page, service, name: str) -> None:
    page.goto(f"{service.url}/ui/account")
    page.get_by_label("Name of the new passkey").fill(name)
    page.get_by_role("button", name="Add a passkey").click()
    expect(page.get_by_role("status")).to_contain_text("Your passkey is added")
    expect(page.locator("ul.passkeys")).to_contain_text(name)


def sign_in_with_passkey(page, service, login: str) -> None:
    """Signs in with a passkey from the sign-in page: for the account named `login`, or
    with an empty name, for whichever account's passkey the browser offers."""
    page.goto(f"{service.url}/ui/signin")
    page.get_by_label("Username or e-mail").fill(login)
    page.get_by_role("button", name="Sign in with a passkey").click()


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    done = subprocess.run([os.environ["USERS_BIN"], *args], input=stdin, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def moves_with_export_and_import(service, passkey_id: str) -> None:
    """`export` writes the passkey, and `import` brings it into another database as it
    was (exported again, the same line)."""
    exported = run("export", "--database-url", service.database_url).stdout
    lines = [json.loads(line) for line in exported.splitlines()]
    [passkey] = [line for line in lines if line["type"] == "passkey" and line["credential_id"] == passkey_id]
    assert passkey["name"] == "Laptop" and "cred" in passkey["passkey"], passkey
    with tempfile.TemporaryDirectory() as target:
        url = f"sqlite://{target}/moved.db"
        imported = run("import", "--database-url", url, stdin=exported)
        assert re.search(r"passkeys=[1-9]", imported.stderr), imported.stderr
        again = [json.loads(line) for line in run("export", "--database-url", url).stdout.splitlines()]
        assert passkey in again


def sessions_of(service, user_id: str) -> list:
    answer = service.admin("/users/Users/ListSessions", {"user_id": user_id})
    assert answer.status == 200, answer
    return answer.body["sessions"]


def shape(value):
    """A JSON value with its strings and numbers left out, and a list shown by its first
    item: what tells two answers apart besides their values and counts."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    return type(value).__name__


def answers_alike_with_and_without_passkeys(service, user, passkey_id: str) -> None:
    """A sign-in by the name of an account with this browser's passkey, and by names
    without one (another account's, and no account's), answer alike: the same shape,
    credentials of lengths real ones have; the decoys stay the same on every ask."""
    other = service.new_user("pk-none")
    starts = {}
    for name in (user.username, other.username, f"nobody-{other.username}"):
        answer = service.post("/users/Users/StartPasskeyLogin", {"username": name})
        assert answer.status == 200, answer
        starts[name] = answer.body
    real = starts[user.username]
    assert [c["id"] for c in real["options"]["publicKey"]["allowCredentials"]] == [passkey_id]
    for name, start in starts.items():
        assert shape(start) == shape(real), (name, start, real)
        listed = start["options"]["publicKey"]["allowCredentials"]
        assert 1 <= len(listed) <= 2, listed
        assert all(len(c["id"]) in (22, 27, 43, 86) for c in listed), listed
        again = service.post("/users/Users/StartPasskeyLogin", {"username": name}).body
        assert again["options"]["publicKey"]["allowCredentials"] == listed
        assert again["challenge_id"] != start["challenge_id"]


def test_register_sign_in_clone_and_delete(passkey_service, new_context):
    service = passkey_service
    user = service.new_user("pk")
    # The device that registers the passkey.
    device = new_context().new_page()
    cdp, device_id = authenticator(device)
    sign_in(device, service, user.username, user.password)
    add_passkey(device, service, "Laptop")
    listed = service.admin("/users/Users/ListPasskeys", {"user_id": user.id})
    assert [k["name"] for k in listed.body["passkeys"]] == ["Laptop"], listed
    moves_with_export_and_import(service, listed.body["passkeys"][0]["id"])
    answers_alike_with_and_without_passkeys(service, user, listed.body["passkeys"][0]["id"])

    # Signed out, it signs in with the passkey alone.
    device.get_by_role("button", name="Sign out").click()
    sign_in_with_passkey(device, service, user.username)
    device.wait_for_url(account_url(service))
    assert any(s.get("method") == "passkey" for s in sessions_of(service, user.id))

    # A copy of the credential on another device, with a counter that has not moved on
    # (as a clone's would not), is refused; the original still works.
    [credential] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": device_id})["credentials"]
    assert credential["signCount"] >= 1, credential
    clone = new_context().new_page()
    clone_cdp, clone_id = authenticator(clone)
    copied = dict(credential, signCount=credential["signCount"] - 1)
    clone_cdp.send("WebAuthn.addCredential", {"authenticatorId": clone_id, "credential": copied})
    before = len(sessions_of(service, user.id))
    sign_in_with_passkey(clone, service, user.username)
    expect(clone.locator("#passkey-error")).to_contain_text("was not accepted")
    assert len(sessions_of(service, user.id)) == before
    device.get_by_role("button", name="Sign out").click()
    sign_in_with_passkey(device, service, user.username)
    device.wait_for_url(account_url(service))

    # Deleted, it signs in no more: the service lists a decoy for the name, which the
    # device does not hold, and the page says no passkey was used.
    device.locator("ul.passkeys").get_by_role("button", name="Delete the passkey Laptop").click()
    expect(device.get_by_role("status")).to_contain_text("That passkey is deleted")
    device.get_by_role("button", name="Sign out").click()
    before = len(sessions_of(service, user.id))
    sign_in_with_passkey(device, service, user.username)
    expect(device.locator("#passkey-error")).to_contain_text("no passkey was used")
    assert len(sessions_of(service, user.id)) == before


def test_a_passkey_as_the_second_step(passkey_service, new_context):
    service = passkey_service
    user = service.new_user("pk2")
    page = new_context().new_page()
    authenticator(page)
    sign_in(page, service, user.username, user.password)
    add_passkey(page, service, "Phone")
    # Two-factor sign-in on, with pyotp as the app.
    page.get_by_role("button", name="Turn on").click()
    totp = pyotp.TOTP(page.locator("#totp-secret").inner_text())
    page.get_by_label("Code from the app").fill(previous_totp_code(totp))
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("heading", name="Save your recovery codes")).to_be_visible()

    # The password, then the passkey instead of a code.
    page.goto(f"{service.url}/ui/account")
    page.get_by_role("button", name="Sign out").click()
    page.goto(f"{service.url}/ui/signin")
    submit_sign_in(page, user.username, user.password)
    expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
    page.get_by_role("button", name="Use a passkey instead").click()
    page.wait_for_url(account_url(service))
    kinds = {(s.get("method"), s.get("second_factor")) for s in sessions_of(service, user.id)}
    assert ("password", "passkey") in kinds, kinds


def test_without_a_name_and_beside_another_start(passkey_service, new_context):
    service = passkey_service
    user = service.new_user("pk3")
    page = new_context().new_page()
    cdp, device_id = authenticator(page)
    sign_in(page, service, user.username, user.password)
    add_passkey(page, service, "Tablet")
    # The registration asked for a discoverable credential, and the authenticator made one.
    [credential] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": device_id})["credentials"]
    assert credential["isResidentCredential"], credential

    # No name: the browser offers the passkey it holds, which names the account.
    page.get_by_role("button", name="Sign out").click()
    sign_in_with_passkey(page, service, "")
    page.wait_for_url(account_url(service))
    methods = [s.get("method") for s in sessions_of(service, user.id)]
    assert methods.count("passkey") == 1, methods

    # Someone else starts a sign-in for the same name while this browser's is in
    # progress (between its two steps): this browser's still finishes.
    page.get_by_role("button", name="Sign out").click()
    others = []

    def start_another_after(route):
        answer = route.fetch()
        other = service.post("/users/Users/StartPasskeyLogin", {"username": user.username})
        assert other.status == 200, other
        others.append(other.body["challenge_id"])
        route.fulfill(response=answer)

    page.route("**/users/Users/StartPasskeyLogin", start_another_after)
    sign_in_with_passkey(page, service, user.username)
    page.wait_for_url(account_url(service))
    assert len(others) == 1
    methods = [s.get("method") for s in sessions_of(service, user.id)]
    assert methods == ["passkey"], methods
