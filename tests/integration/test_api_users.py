"""``/api/v1`` authentication, scopes, CORS and users against a running
engine, and ``callbridge keys`` creating a key that the API accepts."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.server import Engine

from .api_client import Api, error, new_key
from .conftest import EngineFactory

RULES = """
rules:
  - {name: Answer, pattern: "answer", scenarios: [answer_wait_hangup]}
"""


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Engine:
    return await make_engine(RULES, cors_origins=["https://app.example"])


@pytest.fixture
def api(engine: Engine, http: aiohttp.ClientSession) -> Api:
    return Api(engine, http, new_key(engine, "users"))


async def test_auth_missing_wrong_and_scope(api: Api) -> None:
    """Check no key answers 401 unauthorized with a challenge, a wrong
    secret or unknown key 401 invalid_credentials, a key without the
    route's scope 403 forbidden, and Basic auth works like Bearer."""
    status, body = await api.with_key(None).get("/users")
    assert status == 401 and error(body) == ("unauthorized", None)
    key_id, secret = (api.key or "").split(".", 1)
    status, body = await api.with_key(f"{key_id}.{secret}x").get("/users")
    assert status == 401 and error(body) == ("invalid_credentials", None)
    status, body = await api.with_key("cbk_0000000000000000.nothing").get("/users")
    assert status == 401 and error(body) == ("invalid_credentials", None)
    status, body = await api.get("/rooms")
    assert status == 403 and error(body) == ("forbidden", None)
    status, body = await api.get("/webhooks")
    assert status == 403 and error(body) == ("forbidden", None)
    basic = base64.b64encode(f"{key_id}:{secret}".encode()).decode()
    status, body = await api.with_key(None).get("/users", headers={"Authorization": f"Basic {basic}"})
    assert status == 200 and body["users"] == []
    status, body = await api.with_key(None).get("/users", headers={"Authorization": "Basic !!"})
    assert status == 401 and error(body) == ("invalid_credentials", None)
    admin = api.with_key(new_key(api.engine, "admin"))
    assert (await admin.get("/rooms"))[0] == 200
    assert (await admin.get("/users"))[0] == 200


async def test_cors_only_for_configured_origins(api: Api) -> None:
    """Check a configured origin gets CORS headers and a preflight answer;
    any other origin gets none (preflight 403)."""
    status, _ = await api.get("/users", headers={"Origin": "https://app.example"})
    async with api.http.get(api.base + "/users", headers={
            "Origin": "https://app.example", "Authorization": f"Bearer {api.key}"}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    async with api.http.get(api.base + "/users", headers={
            "Origin": "https://evil.example", "Authorization": f"Bearer {api.key}"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with api.http.options(api.base + "/users", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST"}) as resp:
        assert resp.status == 204
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    async with api.http.options(api.base + "/users", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}) as resp:
        assert resp.status == 403


async def test_no_cors_by_default(make_engine: EngineFactory, http: aiohttp.ClientSession) -> None:
    """Check an engine started without --cors-origins sends no CORS header to any origin."""
    engine = await make_engine(RULES)
    api = Api(engine, http, new_key(engine, "users"))
    async with http.get(api.base + "/users", headers={
            "Origin": "https://app.example", "Authorization": f"Bearer {api.key}"}) as resp:
        assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_users_crud_and_paging(api: Api) -> None:
    """Check users are created (and can then log in: the store is shared),
    listed in pages by name, read, updated and deleted."""
    for name in ("cy", "al", "bo"):
        status, user = await api.post("/users", {"name": name, "password": f"pw-{name}",
                                                 "display_name": name.upper()})
        assert status == 201 and user["name"] == name and user["display_name"] == name.upper()
    status, page = await api.get("/users?offset=1&limit=1")
    assert status == 200 and [u["name"] for u in page["users"]] == ["bo"]
    assert (page["total"], page["offset"], page["limit"]) == (3, 1, 1)
    status, user = await api.patch("/users/bo", {"display_name": None, "password": "new-pw"})
    assert status == 200 and user["display_name"] is None
    assert api.engine.store is not None and api.engine.store.verify_password("bo", "new-pw")
    status, user = await api.get("/users/al")
    assert status == 200 and user["display_name"] == "AL"
    status, _ = await api.delete("/users/al")
    assert status == 204
    status, body = await api.get("/users/al")
    assert status == 404 and error(body) == ("not_found", "name")


async def test_sip_access_is_opt_in(api: Api) -> None:
    """Check a user created through the API is web-only unless ``sip: true``
    (no digest hash kept), and PATCH turns SIP on (with the password, the
    hashes' source) and off; ``sip`` without the password is a 400 naming it."""
    store = api.engine.store
    assert store is not None
    status, web_only = await api.post("/users", {"name": "w", "password": "pw"})
    assert status == 201 and web_only["sip"] is False
    assert store.sip_ha1("w", "callbridge", "MD5") is None
    status, phone = await api.post("/users", {"name": "p", "password": "pw", "sip": True})
    assert status == 201 and phone["sip"] is True and store.sip_ha1("p", "callbridge", "MD5")
    status, body = await api.patch("/users/w", {"sip": True})
    assert status == 400 and error(body) == ("invalid_field", "sip")
    status, user = await api.patch("/users/w", {"sip": True, "password": "pw2"})
    assert status == 200 and user["sip"] is True and store.sip_ha1("w", "callbridge", "MD5")
    status, user = await api.patch("/users/p", {"sip": False})
    assert status == 200 and user["sip"] is False and store.sip_ha1("p", "callbridge", "MD5") is None


@pytest.mark.parametrize("method, path, body, status, code, field", [
    ("POST", "/users", {"password": "x"}, 400, "missing_field", "name"),
    ("POST", "/users", {"name": "ok"}, 400, "missing_field", "password"),
    ("POST", "/users", {"name": 3, "password": "x"}, 400, "invalid_field", "name"),
    ("POST", "/users", {"name": "no spaces", "password": "x"}, 400, "invalid_field", "name"),
    ("POST", "/users", {"name": "ok", "password": ""}, 400, "invalid_field", "password"),
    ("POST", "/users", {"name": "ok", "password": "x", "admin": True}, 400, "unknown_field", "admin"),
    ("PATCH", "/users/nobody", {"display_name": "N"}, 404, "not_found", "name"),
    ("PATCH", "/users/nobody", {"password": None}, 400, "invalid_field", "password"),
    ("DELETE", "/users/nobody", None, 404, "not_found", "name"),
    ("GET", "/users?limit=0", None, 400, "invalid_field", "limit"),
    ("GET", "/users?offset=x", None, 400, "invalid_field", "offset"),
])
async def test_user_bad_inputs(api: Api, method: str, path: str, body: Any, status: int, code: str,
                               field: str) -> None:
    """Check each bad user request answers its status with the field at fault."""
    got, answer = await api.call(method, path, body)
    assert (got, error(answer)) == (status, (code, field))


async def test_user_exists_is_a_conflict(api: Api) -> None:
    """Check a second user of the same name (in any case) answers 409."""
    assert (await api.post("/users", {"name": "dup", "password": "x"}))[0] == 201
    status, body = await api.post("/users", {"name": "DUP", "password": "x"})
    assert status == 409 and error(body) == ("user_exists", "name")


async def test_unknown_route_is_json_404(api: Api) -> None:
    """Check an unknown path under /api/v1 answers a JSON 404 error."""
    status, body = await api.get("/nothing-here")
    assert status == 404 and error(body)[0] == "not_found"


async def test_keys_cli_creates_a_key_the_api_accepts(tmp_path: Path, make_engine: EngineFactory,
                                                      http: aiohttp.ClientSession) -> None:
    """Check ``callbridge keys create --scopes calls,users`` prints a key
    that authenticates with exactly those scopes, ``keys list`` shows it
    without its secret, and a bad scope is refused."""
    data = tmp_path / "shared-data"
    result = subprocess.run([sys.executable, "-m", "engine", "keys", "--data-dir", str(data), "create",
                             "--scopes", "calls,users", "--name", "ops"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("use: Authorization: Bearer "))
    key = line.split("Bearer ", 1)[1]
    listing = subprocess.run([sys.executable, "-m", "engine", "keys", "--data-dir", str(data), "list"],
                             capture_output=True, text=True, timeout=60)
    key_id, secret = key.split(".", 1)
    assert f"{key_id}\tcalls,users\tops" in listing.stdout and secret not in listing.stdout
    bad = subprocess.run([sys.executable, "-m", "engine", "keys", "--data-dir", str(data), "create",
                          "--scopes", "root"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "scopes" in bad.stderr
    engine = await make_engine(RULES, data_dir=data)
    api = Api(engine, http, key)
    assert (await api.get("/users"))[0] == 200
    assert (await api.get("/rooms"))[0] == 200
    status, body = await api.get("/webhooks")
    assert status == 403 and error(body) == ("forbidden", None)


async def test_one_time_login_token_logs_the_sdk_in_once(api: Api, http: aiohttp.ClientSession) -> None:
    """Check ``POST /users/{name}/login-tokens`` issues a key with which the
    web SDK logs in as that user without the password, once; the database
    holds only a hash of it; an unknown user is 404 and a bad ttl 400."""
    assert (await api.post("/users", {"name": "kim", "password": "secret-pw", "display_name": "Kim"}))[0] == 201
    status, issued = await api.post("/users/kim/login-tokens")
    assert status == 201 and issued["user"] == "kim" and len(issued["token"]) >= 32
    store = api.engine.store
    assert store is not None and isinstance(store.path, Path)
    with sqlite3.connect(store.path) as db:  # the file itself, WAL included
        keys = [row[0] for row in db.execute("SELECT key FROM kv")]
    assert keys and issued["token"] not in keys and issued["token"] not in repr(keys)
    status, body = await api.post("/users/nobody/login-tokens", {"ttl": 60})
    assert status == 404 and error(body) == ("not_found", "name")
    status, body = await api.post("/users/kim/login-tokens", {"ttl": -1})
    assert status == 400 and error(body)[1] == "ttl"
    url = f"http://127.0.0.1:{api.engine.http_port}/ws"
    for expected in ("login_ok", "error"):
        async with http.ws_connect(url) as ws:
            await ws.send_json({"type": "hello", "version": 1})
            assert (await ws.receive_json(timeout=5))["type"] == "hello"
            await ws.send_json({"type": "login", "token": issued["token"]})
            answer = await ws.receive_json(timeout=5)
            assert answer["type"] == expected, answer
            if expected == "login_ok":
                assert answer["username"] == "kim"
