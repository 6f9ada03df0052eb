"""Micro.js on a service with tenants (`--tenancy namespace`): `Micro.post(path,
namespace, ...)` sends the namespace as `Micro-Namespace` from a page on another
origin, and each namespace is its own user pool: the same username twice, two accounts,
and one tenant's password and session are nothing in the other."""

import os
from pathlib import Path

import pytest

from conftest import SmtpSink, _start_service, watch


@pytest.fixture(scope="module")
def tenanted(work_dir: Path, smtp: SmtpSink):
    """The service on SQLite with the tenants `micro` (what Micro's own snippets name)
    and `acme`."""
    yield from _start_service(
        work_dir, smtp, f"sqlite://{work_dir}/tenants.db", "tenants",
        extra_env={"USERS_TENANCY": "namespace", "USERS_TENANTS": "micro,acme"},
    )


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
