"""Two-factor sign-in with pyotp as the authenticator app: turning TOTP on and off on
the account page, the second step of the sign-in page, recovery codes; and the same
flow through the API on both stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import re

import pyotp
from playwright.sync_api import expect

from conftest import (
    User,
    account_url,
    assert_accessible,
    previous_totp_code,
    signed_in_context,
    submit_sign_in,
)


def test_turn_on_sign_in_with_a_code_and_a_recovery_code_turn_off(service, new_context):
    user = service.new_user("twofa")
    # The pages' Content-Security-Policy would rightly refuse the injected axe-core.
    context = signed_in_context(new_context, service, user, bypass_csp=True)
    page = context.new_page()
    page.goto(f"{service.url}/ui/account")
    expect(page.locator("#totp-status")).to_contain_text("Off")

    # Turn on: the QR code and the key, then the app's first code.
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("heading", name="Turn on two-factor sign-in")).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("QR code"))).to_be_visible()
    assert page.locator("figure.qr svg").count() == 1
    assert_accessible(page)
    totp = pyotp.TOTP(page.locator("#totp-secret").inner_text())
    page.get_by_label("Code from the app").fill(previous_totp_code(totp))
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("heading", name="Save your recovery codes")).to_be_visible()
    assert_accessible(page)
    codes = page.locator("#recovery-codes li").all_inner_texts()
    assert len(codes) == 10 and all(re.fullmatch(r"[A-Z2-9]{5}-[A-Z2-9]{5}", c) for c in codes), codes
    page.get_by_role("link", name="Done").click()
    expect(page.locator("#totp-status")).to_contain_text("10 recovery codes left")

    # Another browser: the password, then the code.
    other = new_context(bypass_csp=True).new_page()
    other.goto(f"{service.url}/ui/signin")
    submit_sign_in(other, user.username, user.password)
    expect(other.get_by_role("heading", name="Enter your code")).to_be_visible()
    assert_accessible(other)
    other.get_by_label("Code").fill("000000" if totp.now() != "000000" else "111111")
    other.get_by_role("button", name="Continue").click()
    expect(other.get_by_role("alert")).to_contain_text("code is incorrect")
    other.get_by_label("Code").fill(totp.now())
    other.get_by_role("button", name="Continue").click()
    other.wait_for_url(account_url(service))

    # A third: a recovery code, typed in lower case.
    third = new_context().new_page()
    third.goto(f"{service.url}/ui/signin")
    submit_sign_in(third, user.username, user.password)
    third.get_by_label("Code").fill(codes[0].lower())
    third.get_by_role("button", name="Continue").click()
    third.wait_for_url(account_url(service))
    expect(third.locator("#totp-status")).to_contain_text("9 recovery codes left")

    # Turn off with the password: the password alone signs in again.
    third.get_by_label("Your password, to turn it off").fill(user.password)
    third.get_by_role("button", name="Turn off").click()
    expect(third.get_by_role("status")).to_contain_text("Two-factor sign-in is off")
    answer = service.post("/users/Users/Login", {"username": user.username, "password": user.password})
    assert answer.status == 200, answer


def test_the_api_flow_on_each_store(any_service):
    """StartTotp, ConfirmTotp, Login's mfa_required, LoginMfa with pyotp's codes and a
    recovery code, and DisableTotp, through the API on SQLite and on PostgreSQL."""
    service = any_service
    user: User = service.new_user("apitotp")
    session = service.login(user)
    bearer = {"Authorization": f"Bearer {session}"}

    started = service.post("/v1/user/StartTotp", {}, bearer)
    assert started.status == 200, started
    assert started.body["uri"].startswith("otpauth://totp/")
    totp = pyotp.parse_uri(started.body["uri"])
    assert totp.secret == started.body["secret"]
    confirmed = service.post("/v1/user/ConfirmTotp", {"code": previous_totp_code(totp)}, bearer)
    assert confirmed.status == 200, confirmed
    recovery = confirmed.body["recovery_codes"]

    first = service.post("/v1/user/Login", {"username": user.username, "password": user.password})
    assert first.status == 401 and first.body["detail"].startswith("mfa_required"), first
    challenge = first.body["challenge_id"]
    opened = service.post("/v1/user/LoginMfa", {"challenge_id": challenge, "code": totp.now()})
    assert opened.status == 200, opened
    assert opened.body["session"]["userId"] == user.id

    again = service.post("/v1/user/Login", {"username": user.username, "password": user.password})
    reused = service.post("/v1/user/LoginMfa", {"challenge_id": again.body["challenge_id"], "code": totp.now()})
    assert reused.status == 401 and "used already" in reused.body["detail"], reused
    by_recovery = service.post(
        "/v1/user/LoginMfa", {"challenge_id": again.body["challenge_id"], "recovery_code": recovery[1]}
    )
    assert by_recovery.status == 200, by_recovery

    off = service.post("/v1/user/DisableTotp", {"password": user.password}, bearer)
    assert off.status == 200, off
    assert service.post("/v1/user/Login", {"username": user.username, "password": user.password}).status == 200
