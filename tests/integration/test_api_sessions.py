"""``/api/v1`` sessions, rules, key-value storage, call records and
webhooks against a running engine: a session started over HTTP gets its
custom data and its control URL's requests; rules are listed, explained
and reloaded; ApplicationStorage values set by a scenario are read over
HTTP; a SIP call leaves a call record; webhook deliveries arrive signed, in
order, are retried, recorded and replayable."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from local_site import local_site

from engine.server import Engine
from engine.web.webhooks import verify_signature

from .api_client import Api, error, new_key
from .conftest import EngineFactory, PeerFactory, wait_until
from .sip_peer import Dialog

RULES = """
rules:
  - {name: Api, pattern: "api", scenarios: [api_session]}
  - {name: Answer, pattern: "answer", scenarios: [answer_wait_hangup]}
  - {name: Rec, pattern: "rec", scenarios: [recorder]}
"""

SCENARIOS = {
    "api_session": """
        from engine.runtime.scenario import AppEvents, ApplicationStorage, Logger, VoxEngine

        async def started(e):
            Logger.write(f"custom {VoxEngine.custom_data()}")
            await ApplicationStorage.put("greeting", VoxEngine.custom_data(), ttl=60)
            await ApplicationStorage.put("counter", "1")
            Logger.write(f"keys {await ApplicationStorage.keys()}")

        async def request(e):
            Logger.write(f"http {e.method} {e.path} {e.query} {e.text}")
            if e.text == "stop":
                VoxEngine.terminate()

        VoxEngine.add_event_listener(AppEvents.Started, started)
        VoxEngine.add_event_listener(AppEvents.HttpRequest, request)
    """,
    "recorder": """
        from engine.runtime.scenario import AppEvents, VoxEngine

        def started(e):
            rec = VoxEngine.create_conference("everyone").record()
            VoxEngine.set_timeout(rec.stop, 100)

        VoxEngine.add_event_listener(AppEvents.Started, started)
    """,
    "answer_wait_hangup": (Path(__file__).parents[1] / "scenarios" / "answer_wait_hangup.py").read_text(),
}


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Engine:
    # The webhook receiver listens on 127.0.0.1: private networks allowed.
    return await make_engine(RULES, SCENARIOS, session_idle_timeout=30.0, webhook_retry_delay=0.05,
                             webhook_private_networks=True)


@pytest.fixture
def api(engine: Engine, http: aiohttp.ClientSession) -> Api:
    return Api(engine, http, new_key(engine, "calls"))


async def test_session_start_control_log_terminate(api: Api) -> None:
    """Check POST /sessions starts the rule's scenario with custom data,
    its control URL's request reaches it as AppEvents.HttpRequest (with no
    API key), it is listed, its log is readable, and DELETE ends it."""
    status, session = await api.post("/sessions", {"rule": "Api", "custom_data": "hello"})
    assert status == 201 and session["rule"] == "Api" and session["calls"] == []
    sid, control = session["id"], session["control_url"]
    async with api.http.post(control + "/kick?x=1", data="ping") as resp:
        assert resp.status == 202 and (await resp.json())["delivered"] is True
    async with api.http.post(control[:-3] + "xyz", data="ping") as resp:
        assert resp.status == 404
    status, listing = await api.get("/sessions")
    assert sid in [s["id"] for s in listing["sessions"]]
    status, one = await api.get(f"/sessions/{sid}")
    assert status == 200 and one["id"] == sid
    status, log = await api.get(f"/sessions/{sid}/log")
    text = "\n".join(log["lines"])
    assert "custom hello" in text and "http POST /kick {'x': '1'} ping" in text
    status, _ = await api.delete(f"/sessions/{sid}")
    assert status == 204
    status, body = await api.get(f"/sessions/{sid}")
    assert status == 404 and error(body) == ("not_found", "session")
    status, log = await api.get(f"/sessions/{sid}/log")
    assert status == 200 and log["lines"][-1].endswith("terminated")
    status, body = await api.get("/sessions/000000000000000000000000/log")
    assert status == 404 and error(body) == ("not_found", "session")


@pytest.mark.parametrize("body, status, code, field", [
    ({}, 400, "missing_field", "rule"),
    ({"rule": 1}, 400, "invalid_field", "rule"),
    ({"rule": "Nope"}, 404, "not_found", "rule"),
    ({"rule": "Api", "custom_data": 5}, 400, "invalid_field", "custom_data"),
])
async def test_session_bad_inputs(api: Api, body: dict[str, Any], status: int, code: str, field: str) -> None:
    """Check bad session starts answer their status with the field at fault."""
    got, answer = await api.post("/sessions", body)
    assert (got, error(answer)) == (status, (code, field))


async def test_storage_shared_with_scenarios(api: Api) -> None:
    """Check values a scenario put in ApplicationStorage are read over
    HTTP, and values put over HTTP are listed, expire and are deleted."""
    status, session = await api.post("/sessions", {"rule": "Api", "custom_data": "hi"})
    assert await wait_until(lambda: "keys ['counter', 'greeting']" in "\n".join(
        api.engine.runtime.read_log(session["id"])))
    status, value = await api.get("/storage/greeting")
    assert status == 200 and value == {"key": "greeting", "value": "hi"}
    status, _ = await api.put("/storage/app.color", {"value": "blue"})
    assert status == 200
    status, _ = await api.put("/storage/app.tmp", {"value": "x", "ttl": 0.05})
    status, keys = await api.get("/storage?prefix=app.")
    assert keys["keys"] in (["app.color", "app.tmp"], ["app.color"])
    assert await wait_until(lambda: api.engine.store is not None and api.engine.store.kv_get(
        "app", "app.tmp", __import__("time").time()) is None)
    status, keys = await api.get("/storage?prefix=app.")
    assert keys["keys"] == ["app.color"]
    status, _ = await api.delete("/storage/app.color")
    assert status == 204
    status, body = await api.get("/storage/app.color")
    assert status == 404 and error(body) == ("not_found", "key")
    status, body = await api.put("/storage/k", {"ttl": 5})
    assert status == 400 and error(body) == ("missing_field", "value")
    status, body = await api.put("/storage/k", {"value": "v", "ttl": 0})
    assert status == 400 and error(body) == ("invalid_field", "ttl")


async def test_rules_list_explain_reload(api: Api) -> None:
    """Check the rules are listed in order, explain says which matches and
    why earlier ones did not, and reload (admin only) picks up a new
    rules.yaml without a restart while a broken one is refused with the
    file, line and reason, keeping the old rules."""
    status, rules = await api.get("/rules")
    assert [r["name"] for r in rules["rules"]] == ["Api", "Answer", "Rec"]
    status, why = await api.post("/rules/explain", {"destination": "answer"})
    assert status == 200 and why["match"] == "Answer"
    assert why["rules"] == [{"name": "Api", "verdict": "pattern does not match"},
                            {"name": "Answer", "verdict": "matched"}]
    status, why = await api.post("/rules/explain", {"destination": "zzz"})
    assert why["match"] is None and len(why["rules"]) == 3
    status, body = await api.post("/rules/explain", {})
    assert status == 400 and error(body) == ("missing_field", "destination")
    status, body = await api.post("/rules/reload")
    assert status == 403 and error(body) == ("forbidden", None)
    admin = api.with_key(new_key(api.engine, "admin"))
    rules_file = Path(api.engine.config.rules)
    rules_file.write_text(rules_file.read_text().replace('pattern: "answer"', 'pattern: "answer|ans"'))
    status, reloaded = await admin.post("/rules/reload")
    assert status == 200 and reloaded["rules"][1]["pattern"] == "answer|ans"
    rules_file.write_text("rules:\n  - {name: X, pattern: \"(\", scenarios: [api_session]}\n")
    status, body = await admin.post("/rules/reload")
    assert status == 422 and error(body) == ("invalid_rules", "rules")
    assert f"{rules_file}:2" in body["error"]["message"]
    status, rules = await api.get("/rules")
    assert rules["rules"][1]["pattern"] == "answer|ans"


class Receiver:
    """A local webhook receiver that fails its first ``fail`` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail > 0:
            self.fail -= 1
            return web.Response(status=503)
        self.received.append((dict(request.headers), body))
        return web.Response(status=204)

    def events(self) -> list[str]:
        return [json.loads(body)["event"] for _, body in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(fail=2)
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    async with local_site(app) as base:
        rec.url = f"{base}/hook"
        yield rec


async def test_webhooks_signed_in_order_retried_and_replayed(api: Api, receiver: Receiver) -> None:
    """Check room and participant events reach a subscribed URL signed
    (HMAC-SHA256 over timestamp and body), in order, after retries of
    failed attempts (recorded), and that a delivery can be replayed."""
    admin = api.with_key(new_key(api.engine, "admin"))
    status, hook = await admin.post("/webhooks", {"url": receiver.url, "events": [
        "room.started", "participant.joined", "participant.left", "room.ended"]})
    assert status == 201 and hook["secret"].startswith("whsec_")
    await api.post("/rooms", {"name": "hooked"})
    rooms = api.engine.rooms
    assert rooms is not None
    rooms.join("conf_hooked", "p1", kind="pstn", display_name="Phone")
    rooms.leave("conf_hooked", "p1")
    await api.post("/rooms/hooked/end")
    order = ["room.started", "participant.joined", "participant.left", "room.ended"]
    assert await wait_until(lambda: receiver.events() == order, timeout=10), receiver.events()
    for headers, body in receiver.received:
        assert verify_signature(hook["secret"], headers["X-Callbridge-Signature"], body,
                                __import__("time").time())
        assert not verify_signature("whsec_wrong", headers["X-Callbridge-Signature"], body,
                                    __import__("time").time())
    status, deliveries = await admin.get(f"/webhooks/{hook['id']}/deliveries")
    first = deliveries["deliveries"][-1]
    assert (first["event"], first["status"], first["attempts"], first["last_code"]) == (
        "room.started", "delivered", 3, 204)
    status, replayed = await admin.post(f"/webhooks/{hook['id']}/deliveries/{first['id']}/replay")
    assert status == 202 and replayed["status"] == "pending"
    assert await wait_until(lambda: receiver.events() == [*order, "room.started"], timeout=10)
    status, body = await admin.post("/webhooks", {"url": "ftp://x", "events": ["room.ended"]})
    assert status == 400 and error(body) == ("invalid_field", "url")
    status, body = await admin.post("/webhooks", {"url": receiver.url, "events": ["room.exploded"]})
    assert status == 400 and error(body) == ("invalid_field", "events")
    status, body = await admin.post(f"/webhooks/{hook['id']}/deliveries/dlv_nope/replay")
    assert status == 404 and error(body) == ("not_found", "delivery")
    status, _ = await admin.delete(f"/webhooks/{hook['id']}")
    assert status == 204
    status, body = await admin.get(f"/webhooks/{hook['id']}")
    assert status == 404 and error(body) == ("not_found", "webhook")


async def test_pending_webhook_delivery_survives_restart(make_engine: EngineFactory,
                                                         http: aiohttp.ClientSession,
                                                         receiver: Receiver) -> None:
    """Check a delivery queued while the receiver was unreachable is sent
    by the next engine started on the same data directory."""
    first = await make_engine(RULES, SCENARIOS, webhook_retry_delay=30.0, webhook_private_networks=True)
    assert first.store is not None
    first.store.create_webhook(receiver.url, ["recording.ready"])
    receiver.fail = 1  # the first attempt fails; the retry is 30 s away
    assert first.webhooks is not None
    first.webhooks.refresh()  # subscribed behind the API's back
    first.webhooks.publish("recording.ready", {"room": "r", "path": "x.wav"})
    first.webhooks.publish("call.started", {"call_id": "c"})  # nobody wants it: not queued
    assert await wait_until(lambda: receiver.fail == 0)
    await first.stop()
    second = await make_engine(RULES, SCENARIOS, data_dir=first.config.data_dir, webhook_retry_delay=0.05,
                               webhook_private_networks=True)
    assert second.webhooks is not None
    second.webhooks.wake()
    # The retry was scheduled 30 s ahead by the first engine; replay it now.
    assert second.store is not None
    pending = second.store.pending_deliveries()
    assert [d.event for d in pending] == ["recording.ready"]
    second.store.replay_delivery(pending[0].delivery_id, 0.0)
    second.webhooks.wake()
    assert await wait_until(lambda: receiver.events() == ["recording.ready"], timeout=10)


async def test_sip_call_leaves_a_call_record(api: Api, peers: PeerFactory) -> None:
    """Check a SIP call answered and hung up by its scenario is queryable in
    /calls with its parties, times and status, also by session id."""
    peer = await peers(api.engine)
    dialog = Dialog(peer, f"sip:answer@127.0.0.1:{api.engine.ua.port}")
    await dialog.call()
    bye = await peer.recv_request("BYE")
    peer.send(bye.create_response(200).to_bytes())
    assert await wait_until(lambda: api.engine.store is not None and api.engine.store.count_call_records() > 0)
    status, calls = await api.get("/calls?limit=5")
    record = calls["calls"][0]
    assert (record["number"], record["status"], record["kind"], record["direction"]) == (
        "answer", "answered", "sip", "inbound")
    assert record["end"] >= record["answer"] >= record["start"]
    status, mine = await api.get(f"/calls?session_id={record['session_id']}")
    assert mine["total"] == 1
    status, body = await api.get("/calls?limit=5000")
    assert status == 400 and error(body) == ("invalid_field", "limit")


async def test_recording_ready_webhook(api: Api, receiver: Receiver) -> None:
    """Check a conference recording that a scenario stops is announced by a
    signed recording.ready delivery naming the file, the conference and the
    session."""
    receiver.fail = 0
    admin = api.with_key(new_key(api.engine, "admin"))
    status, hook = await admin.post("/webhooks", {"url": receiver.url, "events": ["recording.ready"]})
    status, session = await api.post("/sessions", {"rule": "Rec"})
    assert status == 201
    assert await wait_until(lambda: receiver.events() == ["recording.ready"], timeout=10)
    headers, body = receiver.received[0]
    data = json.loads(body)["data"]
    assert (data["conference"], data["session_id"]) == ("everyone", session["id"])
    assert data["path"].endswith(".wav") and Path(data["path"]).is_file()
    assert verify_signature(hook["secret"], headers["X-Callbridge-Signature"], body, __import__("time").time())
