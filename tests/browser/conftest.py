"""The harness of the browser suite: a real SMTP sink, the service binary, two page
origins and headless Chromium, all on 127.0.0.1.

    service   http://127.0.0.1:<A>   the binary named by USERS_BIN, on a fresh SQLite file
    pages     http://127.0.0.1:<B>   test pages, listed in --cors-origins
    foreign   http://127.0.0.1:<C>   the same pages, on an origin that is not listed
    smtp      127.0.0.1:<D>          aiosmtpd, keeping every message it is given

Run it with .ci/browser.sh, which installs what it needs and sets USERS_BIN.
"""

from __future__ import annotations

import ctypes
import email
import email.policy
import functools
import http.server
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
AXE = HERE / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1024, "height": 768}
# Every Playwright action and assertion waits at most this long (milliseconds).
WAIT_MS = 15_000
# What the harness waits for the service's /health and for an e-mail (seconds).
HEALTH_TRIES = 150
MAIL_WAIT = 20.0

expect.set_options(timeout=WAIT_MS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- HTTP from Python (no browser, no CORS) ---------------------------------------------


# Loopback only: never through a proxy the machine may be configured with.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict


def http_post(url: str, body: Any = None, headers: Optional[dict] = None) -> Answer:
    """POSTs JSON and answers the status and the decoded body, whatever the status."""
    data = json.dumps({} if body is None else body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with _opener.open(request, timeout=30) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        raw, status, got = error.read(), error.code, dict(error.headers)
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw.decode(errors="replace")
    return Answer(status, decoded, got)


# ---- The SMTP sink ----------------------------------------------------------------------


@dataclass
class Mail:
    to: list
    subject: str
    body: str

    def link(self, contains: str) -> str:
        """The first http(s) address in the body that contains `contains`."""
        for url in re.findall(r"https?://[^\s<>\"']+", self.body):
            if contains in url:
                return url
        raise AssertionError(f"no link with {contains!r} in the e-mail:\n{self.body}")

    def code(self) -> str:
        """The password reset code: 10 characters of the service's alphabet."""
        found = re.findall(r"\b[ABCDEFGHJKLMNPQRSTUVWXYZ23456789]{10}\b", self.body)
        assert found, f"no reset code in the e-mail:\n{self.body}"
        return found[0]


class SmtpSink:
    """aiosmtpd on 127.0.0.1, keeping every message; `wait_for` takes them in order."""

    def __init__(self) -> None:
        self.messages: list[Mail] = []
        self.taken: set[int] = set()
        self.cond = threading.Condition()
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler hook
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        part = message.get_body(preferencelist=("plain", "html"))
        body = part.get_content() if part is not None else ""
        with self.cond:
            self.messages.append(
                Mail([t.lower() for t in envelope.rcpt_tos], str(message["Subject"] or ""), body)
            )
            self.cond.notify_all()
        return "250 OK"

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.controller.port}?tls=none"

    def wait_for(self, to: str, timeout: float = MAIL_WAIT) -> Mail:
        """The next message to `to` not taken yet, waiting for it up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for index, mail in enumerate(self.messages):
                    if index not in self.taken and to.lower() in mail.to:
                        self.taken.add(index)
                        return mail
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no e-mail to {to} within {timeout} s")
                self.cond.wait(left)


# ---- The page origins -------------------------------------------------------------------


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class Origin:
    """A static file server on 127.0.0.1 over a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        handler = functools.partial(Quiet, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def page(self, name: str, html: str) -> str:
        """Writes a page into the shared directory; answers its address on this origin."""
        (self.directory / name).write_text(html)
        return f"{self.url}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- The service ------------------------------------------------------------------------

_counter = itertools.count(1)


@dataclass
class User:
    id: str
    username: str
    email: str
    password: str


@dataclass
class Service:
    url: str
    admin_key: str
    pages: Origin
    foreign: Origin
    smtp: SmtpSink
    log: Path
    database_url: str
    process: subprocess.Popen = field(repr=False)

    def post(self, path: str, body: Any = None, headers: Optional[dict] = None) -> Answer:
        return http_post(self.url + path, body, headers)

    def admin(self, path: str, body: Any = None) -> Answer:
        return self.post(path, body, {"Authorization": f"Bearer {self.admin_key}"})

    def new_user(self, prefix: str = "user", username: Optional[str] = None) -> User:
        """Creates an account through the API (Create is public): unique names from
        `prefix`, or exactly `username` (once per run, e.g. for a screenshot)."""
        stamp = f"{os.getpid()}{next(_counter)}"
        username = username or f"{prefix}{stamp}"
        user = User("", username, f"{username}@example.com", f"kite-tangerine-{stamp}")
        answer = self.post(
            "/users/Users/Create",
            {"username": user.username, "email": user.email, "password": user.password},
        )
        assert answer.status == 200, f"Create: {answer.status} {answer.body}"
        user.id = answer.body["user"]["id"]
        return user

    def read(self, user_id: str) -> Answer:
        return self.admin("/users/Users/Read", {"id": user_id})

    def login(self, user: User) -> str:
        """A session id from the API's Login (for `Authorization: Bearer`)."""
        answer = self.post("/users/Users/Login", {"username": user.username, "password": user.password})
        assert answer.status == 200, f"Login: {answer.status} {answer.body}"
        return answer.body["session"]["id"]

    def micro_page(self, name: str, script: str, origin: Optional[Origin] = None) -> str:
        """A page that loads /micro.js from the service and then runs `script`."""
        origin = origin or self.pages
        html = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{name}</title>"
            f'<script src="{self.url}/micro.js"></script></head>'
            '<body><main><h1>Test page</h1><p id="out"></p></main>'
            f"<script>{script}</script></body></html>"
        )
        return origin.page(f"{name}.html", html)


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when pytest dies, however it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _admin_key_variable(binary: str) -> str:
    """The environment variable of the admin key, as this binary's --help names it."""
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30).stdout
    return "USERS_ADMIN_KEY" if "USERS_ADMIN_KEY" in help_text else "USERS_API_KEY"


@pytest.fixture(scope="session")
def work_dir():
    base = os.environ.get("BROWSER_WORK")
    path = Path(tempfile.mkdtemp(prefix="users-browser-", dir=base))
    yield path
    if not base:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def smtp():
    sink = SmtpSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


def _start_service(work_dir: Path, smtp: SmtpSink, database_url: str, name: str, host: str = "127.0.0.1",
                   extra_env: Optional[dict] = None):
    """Starts the binary on `database_url`, its public address on `host` (passkeys need
    a domain name: `localhost`), with `extra_env` added to its settings; yields its
    Service, and stops it."""
    binary = os.environ.get("USERS_BIN")
    if not binary or not os.access(binary, os.X_OK):
        pytest.exit("USERS_BIN must name the built users-service (run .ci/browser.sh BIN)", 2)
    pages_dir = work_dir / f"pages-{name}"
    pages_dir.mkdir()
    pages, foreign = Origin(pages_dir), Origin(pages_dir)
    port = free_port()
    url = f"http://{host}:{port}"
    key = "browser-" + os.urandom(16).hex()
    log = work_dir / f"{name}.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "RUST_LOG": os.environ.get("BROWSER_RUST_LOG", "info"),
        "USERS_LISTEN": f"127.0.0.1:{port}",
        "DATABASE_URL": database_url,
        _admin_key_variable(binary): key,
        "USERS_OPEN_SIGNUP": "true",
        "USERS_CORS_ORIGINS": pages.url,
        "USERS_PUBLIC_URL": url,
        "USERS_REDIRECT_ALLOWLIST": f"{url},{pages.url}",
        "USERS_SMTP_URL": smtp.url,
        "USERS_MAIL_FROM": "no-reply@example.com",
        # Every request comes from 127.0.0.1: no per-address limits on checks or sign-ups.
        "USERS_LOGIN_MAX_FAILURES_PER_IP": "0",
        "USERS_CREATE_PER_HOUR": "0",
        **(extra_env or {}),
    }
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [binary], env=env, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
    try:
        for _ in range(HEALTH_TRIES):
            if process.poll() is not None:
                pytest.exit(f"the service exited ({process.returncode}):\n{log.read_text()}", 2)
            try:
                with _opener.open(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            # Not a synchronisation sleep: the pause between bounded polls of /health.
            time.sleep(0.1)
        else:
            pytest.exit(f"the service did not answer /health:\n{log.read_text()}", 2)
        yield Service(url, key, pages, foreign, smtp, log, database_url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        pages.close()
        foreign.close()


@pytest.fixture(scope="session")
def service(work_dir: Path, smtp: SmtpSink):
    """The service on a fresh SQLite file."""
    yield from _start_service(work_dir, smtp, f"sqlite://{work_dir}/users.db", "server")


def _postgres_database(label: str):
    """A fresh database on TEST_DATABASE_URL's server (made with psql, dropped
    afterwards): yields its URL. Skipped, and said so, without a server."""
    admin_url = os.environ.get("TEST_DATABASE_URL")
    if not admin_url:
        pytest.skip("TEST_DATABASE_URL is not set: no PostgreSQL server to test against")
    name = f"users_browser_{label}_{os.getpid()}_{os.urandom(4).hex()}"
    parts = urllib.parse.urlsplit(admin_url)
    server = parts._replace(path="/postgres").geturl()
    subprocess.run(["psql", server, "-qc", f"CREATE DATABASE {name}"], check=True, timeout=60)
    try:
        yield parts._replace(path=f"/{name}").geturl()
    finally:
        subprocess.run(["psql", server, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], timeout=60)


@pytest.fixture(scope="session")
def postgres_service(work_dir: Path, smtp: SmtpSink):
    """The service on a fresh PostgreSQL database."""
    for url in _postgres_database("api"):
        yield from _start_service(work_dir, smtp, url, "postgres")


@pytest.fixture(params=["sqlite", "postgres"])
def any_service(request):
    """Each store's service in turn."""
    return request.getfixturevalue("service" if request.param == "sqlite" else "postgres_service")


@pytest.fixture(scope="session")
def passkey_sqlite_service(work_dir: Path, smtp: SmtpSink):
    """The service on SQLite, its public address on `localhost` (a passkey's relying
    party must be a domain name)."""
    yield from _start_service(work_dir, smtp, f"sqlite://{work_dir}/passkeys.db", "passkeys-sqlite", "localhost")


@pytest.fixture(scope="session")
def passkey_postgres_service(work_dir: Path, smtp: SmtpSink):
    for url in _postgres_database("passkeys"):
        yield from _start_service(work_dir, smtp, url, "passkeys-postgres", "localhost")


@pytest.fixture(params=["sqlite", "postgres"])
def passkey_service(request):
    """A service for passkeys on each store in turn."""
    return request.getfixturevalue(f"passkey_{request.param}_service")


# ---- The browser ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    executable = shutil.which("chromium")
    if not executable:
        pytest.exit("chromium is not installed (.ci/browser.sh installs Debian's package)", 2)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-proxy-server"])
        yield chromium
        chromium.close()


@dataclass
class Watched:
    """A page with what it reported: uncaught errors and console messages."""

    page: Page
    errors: list = field(default_factory=list)
    console: list = field(default_factory=list)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item.failed_call = True


@pytest.fixture
def new_context(browser: Browser, request):
    """Opens browser contexts (separate cookie jars) closed when the test ends; when the
    test failed, what each of their pages shows is printed first."""
    opened: list[BrowserContext] = []

    def make(**options) -> BrowserContext:
        options.setdefault("viewport", VIEWPORT)
        context = browser.new_context(**options)
        context.set_default_timeout(WAIT_MS)
        opened.append(context)
        return context

    yield make
    if getattr(request.node, "failed_call", False):
        for number, context in enumerate(opened):
            for page in context.pages:
                try:
                    text = page.locator("body").inner_text(timeout=2000)
                except Exception as error:  # noqa: BLE001 - best effort, for the report
                    text = f"(no text: {error})"
                print(f"---- context {number}, page {page.url}\n{text[:2000]}")
    for context in opened:
        context.close()


def watch(page: Page) -> Watched:
    watched = Watched(page)
    page.on("pageerror", lambda error: watched.errors.append(str(error)))
    page.on("console", lambda message: watched.console.append((message.type, message.text)))
    return watched


# ---- The pages, as a person uses them ---------------------------------------------------


def sign_in(page: Page, service: Service, login: str, password: str, return_to: Optional[str] = None) -> None:
    """Signs in through /ui/signin and waits for the page it leads to."""
    query = f"?return_to={quote(return_to, safe='')}" if return_to else ""
    page.goto(f"{service.url}/ui/signin{query}")
    submit_sign_in(page, login, password)
    page.wait_for_url(return_to or account_url(service))


def account_url(service: Service) -> re.Pattern:
    """/ui/account, with or without a query (a notice such as ?notice=welcome)."""
    return re.compile(re.escape(f"{service.url}/ui/account") + r"(\?.*)?$")


def submit_sign_in(page: Page, login: str, password: str) -> None:
    page.get_by_label("Username or e-mail").fill(login)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def signed_in_context(new_context: Callable, service: Service, user: User, **options) -> BrowserContext:
    context = new_context(**options)
    page = context.new_page()
    sign_in(page, service, user.username, user.password)
    expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    page.close()
    return context


def session_cookie(context: BrowserContext, service: Service) -> str:
    for cookie in context.cookies(service.url):
        if cookie["name"] == "users_session":
            return cookie["value"]
    raise AssertionError("no users_session cookie for the service")


def previous_totp_code(totp) -> str:
    """The code of the step before now's, for confirming a TOTP secret: the service
    accepts a code one step either side of its own, and this leaves now's code unused
    for a sign-in that follows (a step already used is refused). Checked by the service
    a moment after this reads the clock, the code is two steps old if a step ends in
    between: so in a step's last 5 seconds this first waits (at most those 5 s) for the
    next step, a wait on the TOTP clock itself rather than on the service."""
    left = totp.interval - time.time() % totp.interval
    if left < 5:
        time.sleep(left + 0.05)
    return totp.at(time.time() - totp.interval)


def assert_accessible(page: Page, label: str = "") -> None:
    """axe-core finds no serious or critical violation on the page as it is now. The
    page's context needs `bypass_csp=True`: the service's Content-Security-Policy would
    rightly refuse the injected script."""
    assert AXE.exists(), f"{AXE} is missing: npm ci in tests/browser"
    page.add_script_tag(path=str(AXE))
    results = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    serious = [v for v in results["violations"] if v.get("impact") in ("serious", "critical")]
    report = "\n".join(
        f"{v['impact']}: {v['id']}: {v['help']} ({v['helpUrl']})\n"
        + "\n".join(f"    {node['target']}: {node.get('failureSummary', '')}" for node in v["nodes"])
        for v in serious
    )
    assert not serious, f"{label or page.url}:\n{report}"


def save_screenshot(page: Page, name: str) -> None:
    """The whole page as docs/screenshots/NAME.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(target), full_page=True, animations="disabled", caret="hide")
    assert target.stat().st_size > 0


def ui_session(context: BrowserContext, service: Service) -> Answer:
    """GET /ui/session with the context's cookies (as Micro.session does)."""
    response = context.request.get(f"{service.url}/ui/session", fail_on_status_code=False)
    try:
        body = response.json()
    except Exception:  # noqa: BLE001 - a non-JSON body is reported as text
        body = response.text()
    return Answer(response.status, body, response.headers)
