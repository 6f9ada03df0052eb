"""How the pages look to people: axe-core finds no serious or critical accessibility
violation on any /ui page, and screenshots of the main ones go to docs/screenshots/."""

from __future__ import annotations

import pytest

from conftest import assert_accessible, save_screenshot, signed_in_context

# name -> (path, needs a signed-in browser)
PAGES = {
    "signin": ("/ui/signin", False),
    "signup": ("/ui/signup", False),
    "forgot": ("/ui/forgot", False),
    "reset": ("/ui/reset?email=someone%40example.com", False),
    "magic": ("/ui/magic", False),
    "account": ("/ui/account", True),
    "sessions": ("/ui/sessions", True),
}


def open_page(name, service, new_context, username=None, **options):
    path, signed_in = PAGES[name]
    if signed_in:
        user = service.new_user(name, username=username)
        context = signed_in_context(new_context, service, user, **options)
    else:
        context = new_context(**options)
    page = context.new_page()
    page.goto(service.url + path)
    assert page.url == service.url + path, f"{path} went to {page.url}"
    return page


@pytest.mark.parametrize("name", list(PAGES))
def test_accessibility(name, service, new_context):
    # The pages' Content-Security-Policy would rightly refuse the injected axe-core.
    page = open_page(name, service, new_context, bypass_csp=True)
    assert_accessible(page, PAGES[name][0])


@pytest.mark.parametrize("name", ["signin", "signup", "account", "sessions"])
def test_screenshot(name, service, new_context):
    # A fixed name, so that the pictures change only when the pages do.
    page = open_page(name, service, new_context, username=f"ada-{name}")
    save_screenshot(page, name)
