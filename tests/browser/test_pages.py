"""The service's own pages (/ui/...) as a person uses them, e-mails included."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import expect

from conftest import User, account_url, sign_in, signed_in_context, submit_sign_in, ui_session, watch


def expect_signed_out(context, service) -> None:
    """The context has no live session: /ui/account sends it to the sign-in page."""
    page = context.new_page()
    page.goto(f"{service.url}/ui/account")
    page.wait_for_url(re.compile(re.escape(f"{service.url}/ui/signin")))
    expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
    page.close()
    assert ui_session(context, service).status == 401


def expect_signed_in(context, service, username: str) -> None:
    page = context.new_page()
    page.goto(f"{service.url}/ui/account")
    assert account_url(service).match(page.url), page.url
    expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    page.close()
    session = ui_session(context, service)
    assert session.status == 200 and session.body["user"]["username"] == username, session


def test_forms_post_with_the_pages_own_origin(service, new_context):
    """The pages' form POSTs carry `Origin: <the service>`, which the service accepts.
    (Under `Referrer-Policy: no-referrer` a browser sends `Origin: null` instead, and
    the service refuses every form with 403.)"""
    user = service.new_user("origin")
    page = new_context().new_page()
    response = page.goto(f"{service.url}/ui/signin")
    policy = response.headers.get("referrer-policy")
    with page.expect_request(lambda r: r.method == "POST" and r.url == f"{service.url}/ui/signin") as info:
        submit_sign_in(page, user.username, user.password)
    origin = info.value.all_headers().get("origin")
    answer = info.value.response()
    assert origin == service.url, f"the form was posted with Origin: {origin} (Referrer-Policy: {policy})"
    assert answer.status == 303, (answer.status, answer.text()[:300])


def test_sign_up_verify_update_change_password_sign_out(service, new_context):
    stamp = f"{os.getpid()}"
    username, address, password = f"newbie{stamp}", f"newbie{stamp}@example.com", "plum-orchard-2931"
    context = new_context()
    watched = watch(context.new_page())
    page = watched.page

    # Sign up: signed in at once, and a verification e-mail is sent.
    page.goto(f"{service.url}/ui/signin")
    page.get_by_role("link", name="Sign up").click()
    page.wait_for_url(f"{service.url}/ui/signup")
    page.get_by_label("Username").fill(username)
    page.get_by_label("E-mail").fill(address)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(account_url(service))
    expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    expect(page.get_by_label("Username")).to_have_value(username)
    expect(page.get_by_label("E-mail")).to_have_value(address)
    user_id = ui_session(context, service).body["user"]["id"]
    assert service.read(user_id).body["user"]["verified"] is False

    # The e-mailed link verifies the address.
    link = service.smtp.wait_for(address).link("token=")
    page.goto(link)
    expect(page.get_by_role("heading", name=re.compile("verified", re.I))).to_be_visible()
    assert service.read(user_id).body["user"]["verified"] is True

    # Sign out, then in again.
    page.goto(f"{service.url}/ui/account")
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_url(re.compile(re.escape(f"{service.url}/ui/signin")))
    expect_signed_out(context, service)
    sign_in(page, service, address, password)

    # Update the profile.
    renamed, readdressed = f"renamed{stamp}", f"renamed{stamp}@example.com"
    page.get_by_label("Username").fill(renamed)
    page.get_by_label("E-mail").fill(readdressed)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_be_visible()
    expect(page.get_by_label("Username")).to_have_value(renamed)
    account = service.read(user_id).body["user"]
    assert (account["username"], account["email"]) == (renamed, readdressed)

    # Change the password: another browser signed in as the same user is signed out.
    other = signed_in_context(new_context, service, User(user_id, renamed, readdressed, password))
    new_password = "quartz-meadow-8812"
    page.goto(f"{service.url}/ui/account")
    page.get_by_label("Current password").fill(password)
    page.get_by_label("New password", exact=True).fill(new_password)
    page.get_by_label("Confirm new password").fill(new_password)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)
    expect_signed_out(other, service)
    expect_signed_in(context, service, renamed)
    assert service.post("/users/Users/Login", {"username": renamed, "password": password}).status == 401
    assert service.post("/users/Users/Login", {"username": renamed, "password": new_password}).status == 200

    # Sign out.
    page.goto(f"{service.url}/ui/account")
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_url(re.compile(re.escape(f"{service.url}/ui/signin")))
    expect_signed_out(context, service)
    assert watched.errors == []


def test_wrong_password_is_an_alert(service, new_context):
    user = service.new_user("wrong")
    page = new_context().new_page()
    page.goto(f"{service.url}/ui/signin")
    submit_sign_in(page, user.username, "not-the-password-1")
    expect(page.get_by_role("alert")).to_be_visible()
    assert page.url.startswith(f"{service.url}/ui/signin")


def test_forgot_and_reset_password(service, new_context):
    user = service.new_user("forgot")
    context = new_context()
    page = context.new_page()
    page.goto(f"{service.url}/ui/signin")
    page.get_by_role("link", name="Forgot your password?").click()
    page.wait_for_url(f"{service.url}/ui/forgot")
    page.get_by_label("E-mail").fill(user.email)
    page.get_by_role("button", name="Send the code").click()
    page.wait_for_url(re.compile(re.escape(f"{service.url}/ui/reset?")))
    assert parse_qs(urlsplit(page.url).query)["email"] == [user.email]
    expect(page.get_by_label("E-mail")).to_have_value(user.email)

    code = service.smtp.wait_for(user.email).code()
    new_password = "saffron-beacon-5150"
    page.get_by_label("Code").fill(code)
    page.get_by_label("New password", exact=True).fill(new_password)
    page.get_by_label("Confirm new password").fill(new_password)
    page.get_by_role("button", name="Set the password").click()
    page.wait_for_url(re.compile(re.escape(f"{service.url}/ui/signin")))
    expect(page.get_by_role("status")).to_be_visible()

    submit_sign_in(page, user.username, user.password)
    expect(page.get_by_role("alert")).to_be_visible()
    submit_sign_in(page, user.username, new_password)
    page.wait_for_url(account_url(service))
    expect_signed_in(context, service, user.username)


def test_magic_link_signs_in(service, new_context):
    user = service.new_user("magic")
    context = new_context()
    page = context.new_page()
    page.goto(f"{service.url}/ui/signin")
    page.get_by_role("link", name="E-mail me a sign-in link").click()
    page.wait_for_url(f"{service.url}/ui/magic")
    page.get_by_label("E-mail").fill(user.email)
    page.get_by_role("button", name="Send the link").click()
    expect(page.get_by_role("status")).to_be_visible()
    assert ui_session(context, service).status == 401

    link = service.smtp.wait_for(user.email).link("/ui/magic/")
    assert link.startswith(f"{service.url}/ui/magic/"), link
    open_magic_link(page, service, link)
    page.wait_for_url(account_url(service))
    expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    expect_signed_in(context, service, user.username)

    # The link works once.
    again = new_context().new_page()
    open_magic_link(again, service, link)
    expect(again.get_by_role("alert")).to_be_visible()
    assert not account_url(service).match(again.url), again.url
    assert ui_session(again.context, service).status == 401


def open_magic_link(page, service, link: str) -> None:
    """Opens the e-mailed link as a person does: the link itself, then, where the page
    asks for it (so that a mail scanner opening links does not use them up), the
    button that signs in."""
    page.goto(link)
    confirm = page.get_by_role("button", name="Sign in", exact=True)
    if not account_url(service).match(page.url) and confirm.count() == 1:
        confirm.click()


def test_sessions_list_and_revoke(service, new_context):
    user = service.new_user("sess")
    this = signed_in_context(new_context, service, user)
    other = signed_in_context(new_context, service, user)
    third = signed_in_context(new_context, service, user)

    page = this.new_page()
    page.goto(f"{service.url}/ui/sessions")
    expect(page.get_by_role("heading", name="Your sessions")).to_be_visible()
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.filter(has_text="This browser")).to_have_count(1)
    others = rows.filter(has_not_text="This browser")
    expect(others).to_have_count(2)
    expect(rows.filter(has_text="This browser").get_by_role("button")).to_have_count(0)
    for row in others.all():
        expect(row.get_by_role("button", name=re.compile("^Sign out"))).to_have_count(1)

    # Revoke one of the others: that one is signed out, the rest are not.
    others.first.get_by_role("button", name=re.compile("^Sign out")).click()
    expect(rows).to_have_count(2)
    signed_out = [c for c in (other, third) if ui_session(c, service).status == 401]
    assert len(signed_out) == 1
    expect_signed_out(signed_out[0], service)
    still = third if signed_out[0] is other else other
    expect_signed_in(still, service, user.username)
    expect_signed_in(this, service, user.username)

    # Sign out everywhere: every browser, this one included.
    page.goto(f"{service.url}/ui/sessions")
    page.get_by_role("button", name="Sign out everywhere").click()
    page.wait_for_url(re.compile(re.escape(f"{service.url}/ui/signin")))
    expect_signed_out(still, service)
    expect_signed_out(this, service)
