// Drives engine/web/static/sdk.js under Node with a scripted WebSocket that
// answers like the engine: prints every frame the SDK sent and what each
// moderation call resolved or rejected with (tests/unit/test_sdk_js.py).
const sent = [];

class FakeSocket {
  static OPEN = 1;
  constructor(url) {
    this.url = url;
    this.readyState = 1;
    setTimeout(() => this.onopen && this.onopen(), 0);
  }
  send(text) {
    const frame = JSON.parse(text);
    sent.push(frame);
    const reply = (f) => setTimeout(() => this.onmessage({ data: JSON.stringify(Object.assign({ ref: frame.ref }, f)) }), 0);
    if (frame.type === "hello") reply({ type: "hello", version: 1, server: "fake", heartbeat: 10 });
    else if (frame.type === "login") reply({ type: "login_ok", username: "dr", display_name: "Dr", room: "flow",
      role: "custom", permissions: ["mute_self", "mute_others", "remove"] });
    else if (frame.type === "moderate" && ["lock", "unlock", "end"].includes(frame.action))
      reply({ type: "error", code: "forbidden", message: `${frame.action} needs the 'lock' permission` });
    else if (frame.type === "moderate") reply({ type: "moderated", action: frame.action, participant: frame.participant ?? null });
  }
  close() { this.readyState = 3; }
}
globalThis.WebSocket = FakeSocket;

const { Client } = await import(process.argv[2]);
const client = new Client();
await client.connect("ws://engine.invalid/ws");
await client.login({ token: "a.b.c" });
const results = { room: client.room, role: client.role, canMute: client.can("mute_others"), canEnd: client.can("end") };
for (const [name, args] of [["muteParticipant", ["p1"]], ["unmuteParticipant", ["p1"]], ["removeParticipant", ["p2"]],
                            ["muteAll", []], ["unmuteAll", []], ["lockRoom", []], ["unlockRoom", []], ["endRoom", []]]) {
  try {
    const frame = await client[name](...args);
    results[name] = { type: frame.type, action: frame.action, participant: frame.participant };
  } catch (err) {
    results[name] = { error: err.code, sdkError: err.name };
  }
}
client._stopPing();
console.log(JSON.stringify({ sent, results }));
