"""How the pages look to people: axe-core finds no serious or critical accessibility
violation on any /ui page, and screenshots of the main ones go to docs/screenshots/."""

from __future__ import annotations

import pytest

from conftest import AXE, SCREENSHOTS, signed_in_context

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
    assert AXE.exists(), f"{AXE} is missing: npm ci in tests/browser"
    # The pages' Content-Security-Policy would rightly refuse the injected axe-core.
    page = open_page(name, service, new_context, bypass_csp=True)
    page.add_script_tag(path=str(AXE))
    results = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    serious = [v for v in results["violations"] if v.get("impact") in ("serious", "critical")]
    report = "\n".join(
        f"{v['impact']}: {v['id']}: {v['help']} ({v['helpUrl']})\n"
        + "\n".join(f"    {node['target']}: {node.get('failureSummary', '')}" for node in v["nodes"])
        for v in serious
    )
    assert not serious, f"{PAGES[name][0]}:\n{report}"


@pytest.mark.parametrize("name", ["signin", "signup", "account", "sessions"])
def test_screenshot(name, service, new_context):
    # A fixed name, so that the pictures change only when the pages do.
    page = open_page(name, service, new_context, username=f"ada-{name}")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(target), full_page=True, animations="disabled", caret="hide")
    assert target.stat().st_size > 0
