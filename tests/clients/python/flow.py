"""A full flow through the Python client that openapi-python-client generates from
openapi.yaml, on both route families, against a running server with an admin key.

`.ci/clients.sh` generates the client (package `users_client`), checks this program with
`mypy --strict`, and runs it: `python flow.py BASE_URL ADMIN_KEY`. Every answer is
decoded into the generated models, errors included; nothing is edited by hand.
"""

import sys
import uuid
from typing import TypeVar

from users_client import AuthenticatedClient, Client
from users_client.api.accounts import create, delete, read, search, update, update_password
from users_client.api.m3o_user_api import (
    user_create,
    user_delete,
    user_list,
    user_login,
    user_logout,
    user_read,
    user_read_session,
    user_update,
    user_update_password,
)
from users_client.api.sessions import login, logout, read_session
from users_client.models import (
    AccountResponse,
    AccountsResponse,
    CreateRequest,
    DeleteRequest,
    Empty,
    Error,
    ListRequest,
    LoginRequest,
    LogoutRequest,
    M3OSessionResponse,
    ReadRequest,
    ReadSessionRequest,
    SearchRequest,
    SessionResponse,
    UpdatePasswordRequest,
    UpdateRequest,
    UserResponse,
    UsersResponse,
)
from users_client.types import Response

T = TypeVar("T")


def expect(response: Response[T | Error], kind: type[T]) -> T:
    """The answer, which must be a `kind`."""
    parsed = response.parsed
    if not isinstance(parsed, kind):
        raise AssertionError(f"expected {kind.__name__}, got {response.status_code}: {parsed!r}")
    return parsed


def expect_error(response: Response[T | Error], code: int) -> Error:
    """The answer, which must be a typed error with this code."""
    parsed = response.parsed
    if not isinstance(parsed, Error) or parsed.code != code or response.status_code != code:
        raise AssertionError(f"expected a {code} error, got {response.status_code}: {parsed!r}")
    return parsed


def micro(public: Client, admin: AuthenticatedClient, tag: str) -> None:
    """The Micro routes: Create, Login, ReadSession, Read, Update, Search,
    UpdatePassword, Logout, Delete, and a typed 401, 404 and 409."""
    name, password = f"py_{tag}", "kite-tangerine-7"
    email = f"{name}@example.com"
    user = expect(
        create.sync_detailed(
            client=public,
            body=CreateRequest(username=name, email=email, password=password, id=str(uuid.uuid4())),
        ),
        UserResponse,
    ).user
    assert user.username == name and user.email == email and not user.verified
    conflict = expect_error(
        create.sync_detailed(
            client=public, body=CreateRequest(username=name, email=f"other.{email}", password=password)
        ),
        409,
    )
    assert conflict.id == "users.Create", conflict
    wrong = expect_error(
        login.sync_detailed(client=public, body=LoginRequest(username=name, password="not-the-password")),
        401,
    )
    assert wrong.detail == "username, email or password is incorrect", wrong
    session = expect(
        login.sync_detailed(client=public, body=LoginRequest(email=email, password=password)),
        SessionResponse,
    ).session
    assert session.user_id == user.id
    read_back = expect(
        read_session.sync_detailed(client=public, body=ReadSessionRequest(session_id=session.id)),
        SessionResponse,
    ).session
    assert read_back.username == name
    assert expect(read.sync_detailed(client=admin, body=ReadRequest(id=user.id)), UserResponse).user == user
    expect_error(read.sync_detailed(client=admin, body=ReadRequest(id=str(uuid.uuid4()))), 404)
    changed = expect(
        update.sync_detailed(client=admin, body=UpdateRequest(id=user.id, email=f"new.{email}")),
        UserResponse,
    ).user
    assert changed.email == f"new.{email}"
    found = expect(search.sync_detailed(client=admin, body=SearchRequest(username=name)), UsersResponse)
    assert [u.id for u in found.users] == [user.id]
    new_password = "orbit-lantern-9"
    expect(
        update_password.sync_detailed(
            client=public,
            body=UpdatePasswordRequest(
                user_id=user.id,
                old_password=password,
                new_password=new_password,
                confirm_password=new_password,
            ),
        ),
        Empty,
    )
    # The password change ended the session.
    expect_error(read_session.sync_detailed(client=public, body=ReadSessionRequest(session_id=session.id)), 401)
    again = expect(
        login.sync_detailed(client=public, body=LoginRequest(username=name, password=new_password)),
        SessionResponse,
    ).session
    expect(logout.sync_detailed(client=public, body=LogoutRequest(session_id=again.id)), Empty)
    expect(delete.sync_detailed(client=admin, body=DeleteRequest(id=user.id)), Empty)
    expect_error(read.sync_detailed(client=admin, body=ReadRequest(id=user.id)), 404)


def m3o(public: Client, admin: AuthenticatedClient, tag: str) -> None:
    """The M3O routes: the same flow, with List, in M3O's shapes."""
    name, password = f"py_m3o_{tag}", "kite-tangerine-7"
    email = f"{name}@example.com"
    account = expect(
        user_create.sync_detailed(client=public, body=CreateRequest(username=name, email=email, password=password)),
        AccountResponse,
    ).account
    expect_error(
        user_create.sync_detailed(client=public, body=CreateRequest(username=name, email=email, password=password)),
        409,
    )
    expect_error(
        user_login.sync_detailed(client=public, body=LoginRequest(username=name, password="not-the-password")),
        401,
    )
    session = expect(
        user_login.sync_detailed(client=public, body=LoginRequest(username=name, password=password)),
        M3OSessionResponse,
    ).session
    assert session.user_id == account.id
    assert (
        expect(
            user_read_session.sync_detailed(client=public, body=ReadSessionRequest(session_id=session.id)),
            M3OSessionResponse,
        ).session.id
        == session.id
    )
    assert expect(user_read.sync_detailed(client=admin, body=ReadRequest(id=account.id)), AccountResponse).account == account
    expect_error(user_read.sync_detailed(client=admin, body=ReadRequest(id=str(uuid.uuid4()))), 404)
    expect(user_update.sync_detailed(client=admin, body=UpdateRequest(id=account.id, username=f"{name}_2")), Empty)
    renamed = expect(user_read.sync_detailed(client=admin, body=ReadRequest(id=account.id)), AccountResponse)
    assert renamed.account.username == f"{name}_2"
    listed = expect(user_list.sync_detailed(client=admin, body=ListRequest(limit=1000)), AccountsResponse)
    assert account.id in [a.id for a in listed.users]
    new_password = "orbit-lantern-9"
    expect(
        user_update_password.sync_detailed(
            client=public,
            body=UpdatePasswordRequest(
                user_id=account.id, old_password=password, new_password=new_password, confirm_password=new_password
            ),
        ),
        Empty,
    )
    again = expect(
        user_login.sync_detailed(client=public, body=LoginRequest(email=email, password=new_password)),
        M3OSessionResponse,
    ).session
    expect(user_logout.sync_detailed(client=public, body=LogoutRequest(session_id=again.id)), Empty)
    expect(user_delete.sync_detailed(client=admin, body=DeleteRequest(id=account.id)), Empty)
    expect_error(user_read.sync_detailed(client=admin, body=ReadRequest(id=account.id)), 404)


def main() -> None:
    base_url, key = sys.argv[1], sys.argv[2]
    tag = uuid.uuid4().hex[:8]
    public = Client(base_url=base_url, raise_on_unexpected_status=True)
    admin = AuthenticatedClient(base_url=base_url, token=key, raise_on_unexpected_status=True)
    # Without the key, an admin method answers a typed 401.
    expect_error(read.sync_detailed(client=AuthenticatedClient(base_url=base_url, token="wrong"), body=ReadRequest(id="x")), 401)
    micro(public, admin, tag)
    m3o(public, admin, tag)
    print("python client: both route families passed")


if __name__ == "__main__":
    main()
