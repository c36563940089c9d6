"""A voice bot for ``call.stream_to()``: echoes the caller back, with marks.

Speaks Twilio Media Streams: each ``media`` frame's payload is sent back
as-is (the caller hears themself, one round trip late), and every 50
frames (one second) a ``mark`` follows; the engine echoes it once that
audio has played. Run it, then stream a call to ``ws://127.0.0.1:8765/``
(see ``examples/stream_to_bot.py``)::

    python examples/echo_bot.py
"""

import json

from aiohttp import WSMsgType, web


async def bot(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    sid, count = None, 0
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        frame = json.loads(msg.data)
        if frame["event"] == "start":
            sid = frame["start"]["streamSid"]
        elif frame["event"] == "media" and frame["media"]["track"] == "inbound":
            await ws.send_json({"event": "media", "streamSid": sid, "media": {"payload": frame["media"]["payload"]}})
            count += 1
            if count % 50 == 0:
                await ws.send_json({"event": "mark", "streamSid": sid, "mark": {"name": f"second-{count // 50}"}})
        elif frame["event"] == "mark":
            print("played:", frame["mark"]["name"])
    return ws


if __name__ == "__main__":
    app = web.Application()
    app.router.add_get("/", bot)
    web.run_app(app, host="127.0.0.1", port=8765)
