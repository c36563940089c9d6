"""The OpenAPI 3.0 document of ``/api/v1`` (served at ``/api/v1/openapi.json``).

Written by hand next to :mod:`engine.web.api` and checked against it by
schemathesis in tests/integration/test_api_openapi.py: every operation's
generated requests must get a documented status, content type and body,
and never a server error.
"""

from __future__ import annotations

from typing import Any

from engine.state.store import API_SCOPES
from engine.runtime.tokens import MAX_CUSTOM_ID, MAX_PICTURE, PERMISSIONS, PRESETS
from engine.web.webhooks import EVENTS

__all__ = ["document"]

JSON = "application/json"

_STATUS_TEXT = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No content", 400: "Bad request: the field at fault is named",
    401: "No API key, or a wrong one", 403: "The key lacks the scope (or the code is wrong)",
    404: "No such thing", 409: "Conflict with the current state", 410: "Gone: used or expired",
    422: "Understood but refused", 423: "Locked after too many wrong codes", 429: "Too many attempts",
    503: "The store is not available",
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _obj(props: dict[str, Any], required: tuple[str, ...] = (), extra: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    if not extra:
        schema["additionalProperties"] = False
    return schema


def _op(summary: str, scope: str | None, ok: int, result: str | None, *, errors: tuple[int, ...] = (),
        body: dict[str, Any] | None = None, params: tuple[dict[str, Any], ...] = (),
        body_required: bool = True, ok_also: tuple[int, ...] = ()) -> dict[str, Any]:
    statuses = set(errors) | {400}
    if scope is not None:
        statuses |= {401, 403}
    responses: dict[str, Any] = {}
    for good in (ok, *ok_also):
        responses[str(good)] = {"description": _STATUS_TEXT[good]}
        if result is not None:
            responses[str(good)]["content"] = {JSON: {"schema": _ref(result)}}
    for status in sorted(statuses):
        responses[str(status)] = {"description": _STATUS_TEXT[status],
                                  "content": {JSON: {"schema": _ref("Error")}}}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if scope is not None:
        op["security"] = [{"bearer": []}, {"basic": []}]
        op["description"] = f"Needs an API key with the `{scope}` scope (or `admin`)."
    else:
        op["security"] = []
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {JSON: {"schema": body}}}
    if params:
        op["parameters"] = list(params)
    return op


def _path(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": schema or {"type": "string", "minLength": 1, "maxLength": 64}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


_PAGING = (_query("offset", {"type": "integer", "minimum": 0, "maximum": 10**9}),
           _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}))
_TIME = {"type": "number"}
_ROOM = _path("room", {"type": "string", "pattern": "^[A-Za-z0-9]{1,32}$"})
_GRANT_PROPS = {
    "display_name": _nullable({"type": "string", "maxLength": 128}),
    "role": {"type": "string", "enum": [*PRESETS]},
    "permissions": {"type": "array", "items": {"type": "string", "enum": list(PERMISSIONS)}},
    "preset": {"type": "string", "maxLength": 32,
               "description": "a preset by name, built in or made with POST /presets, instead of role and"
                              " permissions (the role is then the preset's name); unknown: 400"},
}
_CUSTOM_ID = {"type": "string", "minLength": 1, "maxLength": MAX_CUSTOM_ID,
              "description": "the application's own id for the participant (printable), shown in the roster"}
_PICTURE = {"type": "string", "minLength": 1, "maxLength": MAX_PICTURE,
            "description": "the participant's picture: an http:// or https:// URL, shown in the roster"}


def _schemas() -> dict[str, Any]:
    user = _obj({"name": {"type": "string"}, "display_name": _nullable({"type": "string"}),
                 "created_at": _TIME,
                 "sip": {"type": "boolean", "description": "may REGISTER (SIP digest hashes are kept)"}},
                ("name", "display_name", "created_at", "sip"))
    participant = _obj({
        "id": {"type": "string"}, "kind": {"type": "string", "enum": ["web", "pstn"]},
        "display_name": _nullable({"type": "string"}), "identity": _nullable({"type": "string"}),
        "role": {"type": "string"}, "joined_at": _TIME, "muted": {"type": "boolean"},
        "custom_id": _nullable({"type": "string"}), "picture": _nullable({"type": "string"}),
    }, ("id", "kind", "role", "joined_at", "muted"))
    room_props = {
        "id": {"type": "string"}, "conference": {"type": "string"},
        "display_name": _nullable({"type": "string"}),
        "max_participants": _nullable({"type": "integer"}), "record_on_start": {"type": "boolean"},
        "pin_set": {"type": "boolean", "description": "phone callers need a PIN (else they type the room's id);"
                    " the PIN itself is shown only when the room is created"},
        "moderator_pin_set": {"type": "boolean"},
        "end_when_empty_after": _nullable(_TIME), "starts_at": _nullable(_TIME),
        "ends_at": _nullable(_TIME), "duration": _nullable(_TIME), "ended_at": _nullable(_TIME),
        "locked": {"type": "boolean"}, "state": {"type": "string", "enum": ["scheduled", "open", "ended"]},
        "created_at": _TIME, "participant_count": {"type": "integer", "minimum": 0},
        "participants": {"type": "array", "items": _ref("Participant")},
    }
    room_required = ("id", "conference", "state", "participant_count", "locked", "created_at", "pin_set")
    room = _obj(room_props, room_required)
    room_created = _obj({
        **room_props,
        "pin": _nullable({"type": "string", "pattern": "^[0-9]{4,16}$",
                          "description": "the PIN given or drawn, shown this once (null: an open room)"}),
        "moderator_pin": _nullable({"type": "string", "pattern": "^[0-9]{4,16}$"}),
    }, (*room_required, "pin", "moderator_pin"))
    token = _obj({
        "token": {"type": "string"}, "room": {"type": "string"}, "identity": {"type": "string"},
        "display_name": _nullable({"type": "string"}), "role": {"type": "string"},
        "permissions": {"type": "array", "items": {"type": "string"}}, "expires_at": _TIME,
        "conference": {"type": "string"}, "data": _nullable({"type": "string"}),
        "custom_id": _nullable({"type": "string"}), "picture": _nullable({"type": "string"}),
    }, ("room", "identity", "role", "permissions", "expires_at"))
    invite_props = {
        "id": {"type": "string"}, "room": {"type": "string"}, "invitee": {"type": "string"},
        "display_name": _nullable({"type": "string"}), "role": {"type": "string"},
        "permissions": {"type": "array", "items": {"type": "string"}}, "created_at": _TIME,
        "expires_at": _TIME, "used_at": _nullable(_TIME), "attempts": {"type": "integer"},
        "max_attempts": {"type": "integer"},
        "state": {"type": "string", "enum": ["pending", "used", "expired", "locked"]},
    }
    invite = _obj(invite_props, ("id", "room", "invitee", "role", "state", "expires_at"))
    invite_created = _obj({**invite_props, "code": {"type": "string", "pattern": "^[0-9]{8}$"},
                           "link_token": {"type": "string"}},
                          ("id", "room", "code", "link_token", "expires_at"))
    call = _obj({"id": {"type": "string"}, "kind": {"type": "string"}, "direction": {"type": "string"},
                 "state": {"type": "string"}, "number": {"type": "string"},
                 "callerid": _nullable({"type": "string"})}, ("id", "kind", "state"))
    session = _obj({
        "id": {"type": "string"}, "rule": {"type": "string"},
        "scenarios": {"type": "array", "items": {"type": "string"}}, "started_at": _TIME,
        "conferences": {"type": "array", "items": {"type": "string"}},
        "calls": {"type": "array", "items": _ref("SessionCall")},
        "control_url": {"type": "string"},
    }, ("id", "rule", "calls"))
    restrictions = _obj({"kinds": {"type": "array", "items": {"type": "string", "enum": ["web", "sip", "internal"]}},
                         "networks": {"type": "array", "items": {"type": "string"}},
                         "authenticated": {"type": "boolean"}}, ())
    rule = _obj({"name": {"type": "string"}, "pattern": {"type": "string"},
                 "exclude": _nullable({"type": "string"}),
                 "scenarios": {"type": "array", "items": {"type": "string"}},
                 "description": {"type": "string"},
                 "restrictions": restrictions}, ("name", "pattern", "scenarios"))
    webhook = _obj({"id": {"type": "string"}, "url": {"type": "string"},
                    "events": {"type": "array", "items": {"type": "string"}}, "created_at": _TIME,
                    "secret": {"type": "string"}}, ("id", "url", "events"))
    delivery = _obj({
        "id": {"type": "string"}, "webhook": {"type": "string"}, "event": {"type": "string"},
        "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
        "attempts": {"type": "integer"}, "created_at": _TIME, "next_attempt_at": _nullable(_TIME),
        "last_code": _nullable({"type": "integer"}), "last_error": _nullable({"type": "string"}),
        "delivered_at": _nullable(_TIME),
    }, ("id", "webhook", "event", "status", "attempts"))
    page = {"total": {"type": "integer"}, "offset": {"type": "integer"}, "limit": {"type": "integer"}}
    return {
        "Error": _obj({"error": _obj({
            "code": {"type": "string"}, "message": {"type": "string"},
            "field": _nullable({"type": "string"})}, ("code", "message", "field"))}, ("error",)),
        "User": user,
        "LoginToken": _obj({"token": {"type": "string"}, "user": {"type": "string"},
                            "expires_at": {"type": "number"}}, ("token", "user", "expires_at")),
        "UserList": _obj({"users": {"type": "array", "items": _ref("User")}, **page}, ("users", "total")),
        "Participant": participant,
        "Room": room,
        "RoomCreated": room_created,
        "MuteAll": _obj({"room": {"type": "string"}, "muted": {"type": "boolean"},
                         "changed": {"type": "array", "items": {"type": "string"}},
                         "participants": {"type": "array", "items": _ref("Participant")}},
                        ("room", "muted", "changed", "participants")),
        "RoomRecording": _obj({"room": {"type": "string"}, "recording": {"type": "boolean"},
                               "path": _nullable({"type": "string"}), "duration": _nullable(_TIME)},
                              ("room", "recording", "path", "duration")),
        "RoomList": _obj({"rooms": {"type": "array", "items": _ref("Room")}, **page}, ("rooms", "total")),
        "JoinToken": token,
        "Invite": invite,
        "InviteCreated": invite_created,
        "InviteList": _obj({"invites": {"type": "array", "items": _ref("Invite")}}, ("invites",)),
        "SessionCall": call,
        "Session": session,
        "SessionList": _obj({"sessions": {"type": "array", "items": _ref("Session")}}, ("sessions",)),
        "SessionLog": _obj({"id": {"type": "string"}, "lines": {"type": "array", "items": {"type": "string"}}},
                           ("id", "lines")),
        "ControlAck": _obj({"session_id": {"type": "string"}, "delivered": {"type": "boolean"}},
                           ("session_id", "delivered")),
        "Rule": rule,
        "RuleList": _obj({"rules": {"type": "array", "items": _ref("Rule")},
                          "warnings": {"type": "array", "items": {"type": "string"}}}, ("rules",)),
        "Explanation": _obj({
            "destination": {"type": "string"}, "match": _nullable({"type": "string"}),
            "rules": {"type": "array", "items": _obj({"name": {"type": "string"},
                                                      "verdict": {"type": "string"}}, ("name", "verdict"))},
            "status": {"type": "integer", "enum": [401, 403, 404]},
        }, ("destination", "match", "rules")),
        "CallList": _obj({"calls": {"type": "array", "items": {"type": "object"}}, **page}, ("calls", "total")),
        "KeyList": _obj({"keys": {"type": "array", "items": {"type": "string"}}}, ("keys",)),
        "KeyValue": _obj({"key": {"type": "string"}, "value": {"type": "string"}}, ("key", "value")),
        "Preset": _obj({"name": {"type": "string"},
                        "permissions": {"type": "array", "items": {"type": "string"}},
                        "builtin": {"type": "boolean"}, "created_at": _nullable(_TIME)},
                       ("name", "permissions", "builtin", "created_at")),
        "PresetList": _obj({"presets": {"type": "array", "items": _ref("Preset")}}, ("presets",)),
        "Webhook": webhook,
        "WebhookList": _obj({"webhooks": {"type": "array", "items": _ref("Webhook")}}, ("webhooks",)),
        "Delivery": delivery,
        "DeliveryList": _obj({"deliveries": {"type": "array", "items": _ref("Delivery")}}, ("deliveries",)),
    }


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each call)."""
    name = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}
    user_body = _obj({"name": name, "password": {"type": "string", "minLength": 1, "maxLength": 1024},
                      "display_name": _nullable({"type": "string", "maxLength": 128}),
                      "sip": {"type": "boolean", "default": False,
                              "description": "may REGISTER as a SIP phone; only then are digest hashes kept"}},
                     ("name", "password"))
    user_patch = _obj({"password": {"type": "string", "minLength": 1, "maxLength": 1024},
                       "display_name": _nullable({"type": "string", "maxLength": 128}),
                       "sip": {"type": "boolean", "description": "enabling it needs the password too"}})
    pin = _nullable({"type": "string", "pattern": "^[0-9]{6,16}$",
                     "description": "at least --pin-min-length (default 6) digits; kept only as a keyed hash"})
    room_body = _obj({
        "name": {"type": "string", "pattern": "^[A-Za-z0-9]{1,32}$"},
        "display_name": _nullable({"type": "string", "maxLength": 128}),
        "max_participants": _nullable({"type": "integer", "minimum": 1, "maximum": 10000}),
        "record_on_start": {"type": "boolean"}, "pin": pin, "moderator_pin": pin,
        "end_when_empty_after": _nullable({"type": "number", "minimum": 0, "maximum": 86400 * 365}),
        "schedule": _obj({
            "start": {"oneOf": [{"type": "number", "minimum": 0, "maximum": 1e10},
                                {"type": "string", "format": "date-time"}]},
            "duration": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 86400 * 365},
        }),
    })
    room_put = _obj({k: v for k, v in room_body["properties"].items() if k != "name"}, ("pin",))
    room_patch = _obj({
        "display_name": _nullable({"type": "string", "maxLength": 128}),
        "max_participants": _nullable({"type": "integer", "minimum": 1, "maximum": 10000}),
        "record_on_start": {"type": "boolean"}, "locked": {"type": "boolean"},
        "end_when_empty_after": _nullable({"type": "number", "minimum": 0, "maximum": 86400 * 365}),
        "schedule": _obj({
            "start": _nullable({"oneOf": [{"type": "number", "minimum": 0, "maximum": 1e10},
                                          {"type": "string", "format": "date-time"}]}),
            "duration": _nullable({"type": "number", "exclusiveMinimum": True, "minimum": 0,
                                   "maximum": 86400 * 365}),
        }),
    })
    token_body = _obj({"identity": {"type": "string", "minLength": 1, "maxLength": 256}, **_GRANT_PROPS,
                       "ttl": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 86400},
                       "data": {"type": "string", "maxLength": 1024,
                                "description": "free-form text (JSON, say), at most 1 KB of UTF-8: shown to "
                                               "the other participants with the conference's roster"},
                       "custom_id": _CUSTOM_ID, "picture": _PICTURE},
                      ("identity",))
    invite_body = _obj({"invitee": {"type": "string", "minLength": 1, "maxLength": 256}, **_GRANT_PROPS,
                        "ttl": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                                "maximum": 90 * 86400},
                        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100}},
                       ("invitee",))
    redeem_body = _obj({"code": {"type": "string", "maxLength": 64},
                        "room": {"type": "string", "maxLength": 32},
                        "link_token": {"type": "string", "maxLength": 256}})
    key = _path("key", {"type": "string", "minLength": 1, "maxLength": 256})
    session = _path("session", {"type": "string", "pattern": "^[0-9a-f]{24}$"})
    webhook = _path("webhook")
    paths: dict[str, Any] = {
        "/openapi.json": {"get": {"summary": "This document", "security": [],
                                  "responses": {"200": {"description": "OK",
                                                        "content": {JSON: {"schema": {"type": "object"}}}}}}},
        "/users": {
            "get": _op("List users, by name", "users", 200, "UserList", params=_PAGING),
            "post": _op("Create a user (web SDK and SIP registrar)", "users", 201, "User", errors=(409,),
                        body=user_body),
        },
        "/users/{name}": {
            "parameters": [_path("name")],
            "get": _op("Get a user", "users", 200, "User", errors=(404,)),
            "patch": _op("Change a user's password or display name", "users", 200, "User", errors=(404,),
                         body=user_patch),
            "delete": _op("Delete a user", "users", 204, None, errors=(404,)),
        },
        "/users/{name}/login-tokens": {"parameters": [_path("name")], "post": _op(
            "Issue a one-time web SDK login token for a user (no password needed)", "users", 201,
            "LoginToken", errors=(404,), body_required=False,
            body=_obj({"ttl": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                               "maximum": 86400}}))},
        "/rooms": {
            "get": _op("List rooms", "calls", 200, "RoomList", params=_PAGING),
            "post": _op("Create a room: conference conf_<name>; without a pin the engine draws one"
                        " (shown once), \"pin\": null makes an open room", "calls", 201, "RoomCreated",
                        errors=(409,),
                        body=room_body),
        },
        "/rooms/{room}": {
            "parameters": [_ROOM],
            "get": _op("Get a room with its live participants", "calls", 200, "Room", errors=(404,)),
            "put": _op("Create room {room}, or answer the existing one (idempotent: 201, then 200 with the"
                       " same body); pin is required (null: an open room) and must match an existing"
                       " room's", "calls", 201, "Room", errors=(409,), body=room_put, ok_also=(200,)),
            "patch": _op("Change a room's title, cap, schedule, record_on_start or lock", "calls", 200, "Room",
                         errors=(404, 409), body=room_patch),
            "delete": _op("End and delete a room", "calls", 204, None, errors=(404,)),
        },
        "/rooms/{room}/end": {"parameters": [_ROOM], "post": _op(
            "End a room: its calls are hung up", "calls", 200, "Room", errors=(404,))},
        "/rooms/{room}/lock": {"parameters": [_ROOM], "post": _op(
            "Lock (no newcomers but moderators) or unlock a room", "calls", 200, "Room", errors=(404,),
            body=_obj({"locked": {"type": "boolean"}}, ("locked",)))},
        "/rooms/{room}/participants/{participant}": {
            "parameters": [_ROOM, _path("participant")],
            "delete": _op("Remove a participant (its call is hung up)", "calls", 204, None, errors=(404,)),
        },
        "/rooms/{room}/participants/{participant}/mute": {
            "parameters": [_ROOM, _path("participant")],
            "post": _op("Mute or unmute a participant for everyone (phone or browser)", "calls", 200,
                        "Participant", errors=(404,), body=_obj({"muted": {"type": "boolean"}}, ("muted",))),
        },
        "/rooms/{room}/mute_all": {"parameters": [_ROOM], "post": _op(
            "Mute or unmute every participant (but the identities in except)", "calls", 200, "MuteAll",
            errors=(404,), body=_obj({"muted": {"type": "boolean"},
                                      "except": {"type": "array", "maxItems": 100,
                                                 "items": {"type": "string", "minLength": 1,
                                                           "maxLength": 256}}}, ("muted",)))},
        "/rooms/{room}/recording": {
            "parameters": [_ROOM],
            "get": _op("Whether the room's conference is recording, and to which file", "calls", 200,
                       "RoomRecording", errors=(404,)),
            "post": _op("Start or stop recording the room's conference (webhooks recording.started,"
                        " recording.stopped, then recording.ready); 409 no_conference, not_recordable,"
                        " not_recording", "calls", 200, "RoomRecording", errors=(404, 409),
                        body=_obj({"action": {"type": "string", "enum": ["start", "stop"]}}, ("action",))),
        },
        "/rooms/{room}/tokens": {"parameters": [_ROOM], "post": _op(
            "Issue a join token (JWT) for the web SDK", "calls", 201, "JoinToken", errors=(404, 409),
            body=token_body)},
        "/rooms/{room}/invites": {
            "parameters": [_ROOM],
            "get": _op("List a room's invites (without their codes)", "calls", 200, "InviteList", errors=(404,)),
            "post": _op("Invite someone: a one-time code and link token, shown once", "calls", 201,
                        "InviteCreated", errors=(404, 409, 503), body=invite_body),
        },
        "/invites/{invite}": {"parameters": [_path("invite")], "delete": _op(
            "Revoke an invite", "calls", 204, None, errors=(404,))},
        "/invites/redeem": {"post": _op(
            "Redeem an invite's code (with its room) or link token for a join token; no API key",
            None, 200, "JoinToken", errors=(403, 410, 423, 429), body=redeem_body)},
        "/tokens/verify": {"post": _op(
            "Check a join token and show what it grants", "calls", 200, "JoinToken",
            body=_obj({"token": {"type": "string", "maxLength": 4096}}, ("token",)))},
        "/presets": {
            "get": _op("List the presets: the built-in ones (guest, moderator, subscriber) and the named"
                       " ones", "admin", 200, "PresetList"),
            "post": _op("Name a permission set that tokens and invites ask for by name (preset); 409"
                        " builtin_preset or preset_exists", "admin", 201, "Preset", errors=(409,),
                        body=_obj({"name": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,31}$"},
                                   "permissions": {"type": "array", "maxItems": 64,
                                                   "items": {"type": "string", "enum": list(PERMISSIONS)}}},
                                  ("name", "permissions"))),
        },
        "/presets/{preset}": {
            "parameters": [_path("preset", {"type": "string", "minLength": 1, "maxLength": 32})],
            "get": _op("Get a preset", "admin", 200, "Preset", errors=(404,)),
            "delete": _op("Delete a named preset (tokens and invites issued with it keep their"
                          " permissions); 409 builtin_preset", "admin", 204, None, errors=(404, 409)),
        },
        "/sessions": {
            "get": _op("List running scenario sessions and their calls", "calls", 200, "SessionList"),
            "post": _op("Start a rule's scenarios with custom data (VoxEngine.custom_data())", "calls", 201,
                        "Session", errors=(404, 422),
                        body=_obj({"rule": {"type": "string", "maxLength": 256},
                                   "custom_data": {"type": "string", "maxLength": 65536}}, ("rule",))),
        },
        "/sessions/{session}": {
            "parameters": [session],
            "get": _op("Get a running session", "calls", 200, "Session", errors=(404,)),
            "delete": _op("Terminate a session", "calls", 204, None, errors=(404,)),
        },
        "/sessions/{session}/log": {"parameters": [session], "get": _op(
            "Read a session's log (running or ended)", "calls", 200, "SessionLog", errors=(404,))},
        "/control/{session}/{secret}": {
            "parameters": [session, _path("secret")],
            "post": _op("A session's control URL: the request reaches it as AppEvents.HttpRequest",
                        None, 202, "ControlAck", errors=(404,),
                        body={"type": "object"}, body_required=False),
        },
        "/rules": {"get": _op("List the rules, in order", "calls", 200, "RuleList")},
        "/rules/explain": {"post": _op(
            "Which rule a destination reaches, and why the ones before did not", "calls", 200,
            "Explanation", body=_obj({"destination": {"type": "string", "maxLength": 256},
                                      "kind": {"type": "string", "enum": ["web", "sip", "internal"]},
                                      "source": {"type": "string", "maxLength": 64},
                                      "authenticated": {"type": "boolean"}}, ("destination",)))},
        "/rules/reload": {"post": _op("Reload rules.yaml and the scenarios without a restart", "admin",
                                      200, "RuleList", errors=(422,))},
        "/calls": {"get": _op("Call records, newest first", "calls", 200, "CallList",
                              params=(*_PAGING, _query("session_id", {"type": "string", "maxLength": 64})))},
        "/storage": {"get": _op("Keys of the scenarios' ApplicationStorage", "calls", 200, "KeyList",
                                params=(_query("prefix", {"type": "string", "maxLength": 256}),))},
        "/storage/{key}": {
            "parameters": [key],
            "get": _op("Read a value", "calls", 200, "KeyValue", errors=(404,)),
            "put": _op("Set a value, with an optional time to live in seconds", "calls", 200, "KeyValue",
                       body=_obj({"value": {"type": "string", "maxLength": 1048576},
                                  "ttl": _nullable({"type": "number", "exclusiveMinimum": True, "minimum": 0,
                                                    "maximum": 315360000})}, ("value",))),
            "delete": _op("Delete a key", "calls", 204, None, errors=(404,)),
        },
        "/webhooks": {
            "get": _op("List webhooks", "admin", 200, "WebhookList"),
            "post": _op("Subscribe a URL to events; the answer holds its signing secret", "admin", 201,
                        "Webhook", body=_obj({
                            "url": {"type": "string", "maxLength": 2048},
                            "events": {"type": "array", "minItems": 1,
                                       "items": {"type": "string", "enum": [*EVENTS, "*"]}}},
                            ("url", "events"))),
        },
        "/webhooks/{webhook}": {
            "parameters": [webhook],
            "get": _op("Get a webhook (with its secret)", "admin", 200, "Webhook", errors=(404,)),
            "delete": _op("Unsubscribe", "admin", 204, None, errors=(404,)),
        },
        "/webhooks/{webhook}/deliveries": {"parameters": [webhook], "get": _op(
            "A webhook's deliveries, newest first", "admin", 200, "DeliveryList", errors=(404,),
            params=(_query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),))},
        "/webhooks/{webhook}/deliveries/{delivery}/replay": {
            "parameters": [webhook, _path("delivery")],
            "post": _op("Send a delivery again", "admin", 202, "Delivery", errors=(404,)),
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "callbridge management API",
            "version": "1",
            "description": "Users, rooms, join tokens, invites, presets, sessions, rules, call records, "
                           "storage and webhooks. Errors are {\"error\": {\"code\", \"message\", "
                           f"\"field\"}}}}. API key scopes: {', '.join(API_SCOPES)}.",
        },
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "Authorization: Bearer KEYID.SECRET (callbridge keys create)"},
                "basic": {"type": "http", "scheme": "basic", "description": "KEYID:SECRET"},
            },
        },
    }
