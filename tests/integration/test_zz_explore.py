import asyncio
from pathlib import Path
CORPUS = Path("/work/shared/corpora/rfc4475")
async def test_explore(make_engine, peers):
    engine = await make_engine("""
rules:
  - {name: Hangup, pattern: "echo", scenarios: [answer_wait_hangup]}
""")
    out = []
    for f in sorted(CORPUS.glob("*.dat")):
        peer = await peers(engine)
        peer.send(f.read_bytes())
        got = []
        try:
            while True:
                raw = await peer.recv_raw(0.4)
                got.append(raw.split(b"\r\n")[0].decode(errors="replace"))
        except asyncio.TimeoutError:
            pass
        out.append(f"{f.name}: {got}")
    Path("/tmp/explore/out.txt").write_text("\n".join(out))
