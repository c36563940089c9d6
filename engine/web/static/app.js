// callbridge demo: a video conference with phone dial-in, on the web SDK.
//
// How it works (the shipped rules and scenarios do the rest):
// - the visitor logs in as a guest with their name (login {guest}); on an
//   engine started with --guests off (GET /config.json says so) the page
//   asks for a user name and password instead, or takes a one-time login
//   link (?login=TOKEN, from POST /api/v1/users/{name}/login-tokens);
// - with a join token (?token=…) whose permissions allow it, the page is a
//   moderator's: per participant mute/unmute and remove, and for the room
//   mute all, lock/unlock and end (the SDK's moderate frames; the engine
//   checks the token again). Everyone's roster shows who is muted, live
//   (the conference sends PARTICIPANT_UPDATED and the new list);
// - the page calls "joinconf" with X-Conference-Id: the gatekeeper scenario
//   bridges that call (audio only) into conference conf_<id>, whose session
//   sends the participant list (PARTICIPANTS) as messages and dials phones
//   out on request (CALL_PARTICIPANT);
// - video (and the browsers' voices) go peer to peer: for each pair of web
//   participants the one with the smaller user name places a direct call
//   (X-DirectCall) to the other, and the P2P rule forwards it.
// Phone callers are heard through the conference call.

import { Client, ClientEvents, CallEvents } from "/sdk.js";

const $ = (id) => document.getElementById(id);
const state = {
  client: null,
  confCall: null,
  confId: "",
  me: "",
  stream: null,
  participants: [],
  peers: new Map(),     // user name -> { call, retries }
  tiles: new Map(),     // participant key -> tile element
  muted: false,
  cameraOff: false,
  leaving: false,
  guests: true,         // GET /config.json: does the engine take guests?
  loginToken: null,     // ?login=…: a one-time login token (a login link)
  locked: false,
};
// For debugging from the console (and the tests).
window.demo = state;

// -- small helpers ---------------------------------------------------------------

function initials(name) {
  const parts = String(name || "?").trim().split(/\s+/).filter(Boolean);
  return ((parts[0] || "?")[0] + (parts.length > 1 ? parts[parts.length - 1][0] : "")).toUpperCase();
}

/** A participant's picture (a join token's http(s) URL, checked by the engine)
 *  or, without one, its initials. */
function avatar(p) {
  if (typeof p.picture === "string" && /^https?:\/\//i.test(p.picture)) {
    const img = el("img", "mini picture");
    img.alt = "";
    img.referrerPolicy = "no-referrer";
    img.src = p.picture;
    img.addEventListener("error", () => img.replaceWith(el("span", "mini", initials(p.name))));
    return img;
  }
  return el("span", "mini", initials(p.name));
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function toast(text) {
  const node = el("div", "toast", text);
  $("toasts").appendChild(node);
  setTimeout(() => node.remove(), 4500);
}

function setStatus(text, kind = "") {
  $("status").className = `status ${kind}`;
  $("status-text").textContent = text;
}

function logInvite(text, kind = "") {
  const item = el("li", kind, text);
  $("invite-log").prepend(item);
  while ($("invite-log").children.length > 6) $("invite-log").lastChild.remove();
}

/** Mark a tile "playing" once its video decodes frames. */
function watchVideo(tile, video) {
  const mark = () => tile.classList.add("playing");
  if ("requestVideoFrameCallback" in video) video.requestVideoFrameCallback(mark);
  else video.addEventListener("playing", mark, { once: true });
}

// -- tiles -----------------------------------------------------------------------

function makeTile(key, name, kind) {
  let tile = state.tiles.get(key);
  if (tile) return tile;
  tile = el("div", `tile ${kind}`);
  tile.dataset.key = key;
  tile.append(el("div", "avatar", initials(name)));
  if (kind !== "phone") {
    const video = el("video");
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true; // the SDK plays the audio; the tile shows the picture
    tile.append(video);
  }
  const label = el("div", "label");
  label.append(el("span", "name", name));
  tile.append(label);
  tile.append(el("div", "state", kind === "phone" ? "Phone" : "Connecting…"));
  $("grid").append(tile);
  state.tiles.set(key, tile);
  return tile;
}

function removeTile(key) {
  const tile = state.tiles.get(key);
  if (!tile) return;
  const video = tile.querySelector("video");
  if (video) video.srcObject = null;
  tile.remove();
  state.tiles.delete(key);
}

function showStream(key, stream) {
  const tile = state.tiles.get(key);
  if (!tile) return;
  const video = tile.querySelector("video");
  if (!video || video.srcObject === stream) return;
  video.srcObject = stream;
  watchVideo(tile, video);
  video.play().catch(() => {});
}

// -- the participant list ----------------------------------------------------------

/** Whether this page may moderate (the join token's permissions). */
function can(permission) {
  return !!state.client && state.client.can(permission);
}

async function moderate(action, participant, done) {
  try {
    await state.client.moderate(action, participant);
    if (done) done();
  } catch (err) {
    toast(`${action.replace("_", " ")} failed: ${err && err.message ? err.message : err}`);
  }
}

function renderPeople() {
  const list = $("people");
  list.replaceChildren();
  for (const p of state.participants) {
    const mine = p.kind === "web" && p.number === state.me;
    const item = el("li", `${p.kind}${p.muted ? " muted" : ""}`);
    item.dataset.id = p.id;
    item.dataset.muted = String(!!p.muted);
    item.append(avatar(p));
    const who = el("span", "who");
    who.append(el("span", "name", p.name + (mine ? " (you)" : "")));
    who.append(el("span", "kind", p.kind === "pstn" ? `Phone${p.number && p.number !== p.name ? " · " + p.number : ""}` : "Browser"));
    item.append(who);
    if (p.muted) item.append(el("span", "badge mute-state", "Muted"));
    if (!mine && can("mute_others")) {
      const button = el("button", "small mute-one", p.muted ? "Unmute" : "Mute");
      button.type = "button";
      button.addEventListener("click", () => moderate(p.muted ? "unmute" : "mute", p.id));
      item.append(button);
    }
    if (!mine && can("remove")) {
      const button = el("button", "small danger remove-one", "Remove");
      button.type = "button";
      button.addEventListener("click", () => moderate("remove", p.id, () => toast(`${p.name} was removed`)));
      item.append(button);
    }
    list.append(item);
  }
  $("count").textContent = String(state.participants.length);
}

function renderModeration() {
  const any = ["mute_others", "lock", "end"].some(can);
  $("moderation").hidden = !any;
  $("mute-all").hidden = $("unmute-all").hidden = !can("mute_others");
  $("lock-room").hidden = !can("lock");
  $("end-room").hidden = !can("end");
  $("lock-room").textContent = state.locked ? "Unlock room" : "Lock room";
  $("lock-room").setAttribute("aria-pressed", String(state.locked));
}

function onParticipantUpdated(update) {
  if (!update || typeof update.id !== "string") return;
  const p = state.participants.find((x) => x.id === update.id);
  if (!p) return;
  const changed = !!p.muted !== !!update.muted;
  p.muted = !!update.muted;
  renderPeople();
  if (changed && p.kind === "web" && p.number === state.me) toast(p.muted ? "A moderator muted you" : "A moderator unmuted you");
}

function onParticipants(list) {
  const before = new Set(state.participants.map((p) => p.id));
  state.participants = Array.isArray(list) ? list : [];
  renderPeople();
  const keep = new Set(["local"]);
  for (const p of state.participants) {
    if (p.kind === "web" && p.number === state.me) continue;
    const key = p.kind === "web" ? `web:${p.number}` : `phone:${p.id}`;
    keep.add(key);
    makeTile(key, p.name, p.kind === "web" ? "remote" : "phone");
    if (!before.has(p.id) && before.size) toast(`${p.name} joined`);
  }
  for (const key of [...state.tiles.keys()]) if (!keep.has(key)) removeTile(key);
  syncPeers();
}

// -- peer-to-peer calls between browsers -------------------------------------------

function webOthers() {
  return state.participants.filter((p) => p.kind === "web" && p.number && p.number !== state.me);
}

function syncPeers() {
  const others = new Set(webOthers().map((p) => p.number));
  for (const user of others) {
    if (!state.peers.has(user) && state.me < user) placeDirect(user);
  }
  for (const [user, peer] of [...state.peers]) {
    if (!others.has(user)) {
      state.peers.delete(user);
      peer.call.hangup();
    }
  }
}

function placeDirect(user, retries = 0) {
  const call = state.client.call({
    number: user, video: true, direct: true,
    customHeaders: { "X-Conference-Id": state.confId },
  });
  attachPeer(user, call, retries);
}

function attachPeer(user, call, retries = 0) {
  state.peers.set(user, { call, retries });
  const key = `web:${user}`;
  call.on(CallEvents.EndpointAdded, (e) => showStream(key, e.stream));
  const ended = (e) => {
    const peer = state.peers.get(user);
    if (!peer || peer.call !== call) return;
    state.peers.delete(user);
    const tile = state.tiles.get(key);
    if (tile) tile.classList.remove("playing");
    // Still in the conference: try again (the caller side only), a few times.
    if (!state.leaving && state.me < user && webOthers().some((p) => p.number === user) && retries < 3) {
      setTimeout(() => { if (!state.peers.has(user) && !state.leaving) placeDirect(user, retries + 1); }, 1000 * (retries + 1));
    } else if (e && e.code && e.code >= 400 && e.code !== 487) {
      console.warn(`callbridge demo: video with ${user} ended`, e.code, e.reason);
    }
  };
  call.on(CallEvents.Disconnected, ended);
  call.on(CallEvents.Failed, ended);
}

function onIncoming(e) {
  const call = e.call;
  const sameRoom = e.direct && (e.headers || {})["X-Conference-Id"] === state.confId && state.confCall;
  if (!sameRoom) { call.reject(486); return; }
  const user = e.callerId;
  const old = state.peers.get(user);
  if (old) { state.peers.delete(user); old.call.hangup(); }
  if (!state.tiles.has(`web:${user}`)) makeTile(`web:${user}`, e.displayName || user, "remote");
  attachPeer(user, call);
  call.answer({ video: true });
}

// -- the conference call ------------------------------------------------------------

function onConferenceMessage(e) {
  let data;
  try { data = JSON.parse(e.text); } catch { return; }
  switch (data.type) {
    case "PARTICIPANTS":
      onParticipants(data.participants);
      break;
    case "PARTICIPANT_UPDATED":
      onParticipantUpdated(data.participant);
      break;
    case "CALL_PARTICIPANT_CONNECTED":
      // a phone that dialed in (inbound) is news, not an answer to our invite
      if (data.inbound) {
        toast(`${data.name || data.number} joined by phone`);
        break;
      }
      logInvite(`${data.number} answered`, "ok");
      toast(`${data.number} joined by phone`);
      break;
    case "CALL_PARTICIPANT_DISCONNECTED":
      if (data.inbound) {
        toast(`${data.name || data.number} left`);
        break;
      }
      logInvite(`${data.number} hung up`);
      break;
    case "CALL_PARTICIPANT_FAILED":
      logInvite(`${data.number}: ${data.reason || "failed"}${data.code ? ` (${data.code})` : ""}`, "bad");
      break;
  }
}

async function openCamera() {
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } });
  } catch (err) {
    console.warn("callbridge demo: no camera, audio only", err);
    return navigator.mediaDevices.getUserMedia({ audio: true });
  }
}

//: Why a room refused us (the gatekeeper's X-Reason), as the page says it.
const REFUSALS = {
  pin_required: "This conference needs its PIN.",
  wrong_pin: "That PIN is not valid.",
  too_many_attempts: "Too many attempts. Please try again later.",
  pin_locked: "This conference's PIN is locked for now. Please try again later.",
  unavailable: "PIN entry is not available right now. Please try again later.",
  wrong_room: "Your invitation is for another conference.",
  room_locked: "This conference is locked: a moderator has closed it to newcomers.",
  room_full: "This conference is full.",
  room_ended: "This conference has ended.",
  room_not_started: "This conference has not started yet.",
};

async function join(name, confId, pin) {
  state.leaving = false;
  state.confId = confId;
  if (!state.stream) state.stream = await openCamera();
  const client = new Client({ localStream: state.stream });
  state.client = client;
  setStatus("Connecting…", "busy");
  await client.connect();
  // a join token (?token=…, from POST /api/v1/rooms/{id}/tokens or an
  // invite) admits to its room with its role and permissions (dial_out for
  // "invite by phone"); without one the page is a guest
  let me;
  if (state.token) me = await client.login({ token: state.token });
  else if (state.guests) me = await client.login({ guest: name });
  else if (state.loginToken) me = await client.login({ token: state.loginToken });
  else me = await client.login($("username").value.trim(), $("password").value);
  $("password").value = "";
  state.me = me.username;
  if (!state.guests || state.token) name = me.display_name || me.username;
  if (me.room) confId = state.confId = me.room;
  client.on(ClientEvents.IncomingCall, onIncoming);
  client.on(ClientEvents.Disconnected, () => { if (!state.leaving) leave("The connection to the server was lost."); });

  const headers = { "X-Conference-Id": confId };
  if (pin) headers["X-Conference-Pin"] = pin;
  const call = client.call({ number: "joinconf", customHeaders: headers });
  state.confCall = call;
  call.on(CallEvents.MessageReceived, onConferenceMessage);
  call.on(CallEvents.Disconnected, (e) => { if (!state.leaving) leave(e.code === 200 ? "The conference has ended." : `Disconnected (${e.reason || e.code}).`); });
  call.on(CallEvents.Failed, (e) => {
    if (state.leaving) return;
    const reason = (e.headers || {})["X-Reason"];
    if (reason === "pin_required" || reason === "wrong_pin") {
      $("pin-label").hidden = false;  // the room has a PIN: ask for it
      $("pin").focus();
    }
    leave(REFUSALS[reason] || `Could not join: ${e.reason || e.code}.`);
  });
  await call.waitFor(CallEvents.Connected, 30000);

  showRoom(name, confId, pin);
  renderModeration();
  setStatus("In the conference", "online");
}

function showRoom(name, confId, pin) {
  $("join-view").hidden = true;
  $("room-view").hidden = false;
  $("room-info").hidden = false;
  $("room-label").textContent = `Conference ${confId}`;
  $("dial-in").textContent = `Phone PIN: ${pin || confId}#`;
  const tile = makeTile("local", `${name} (you)`, "local");
  const video = tile.querySelector("video");
  video.srcObject = state.stream;
  watchVideo(tile, video);
  video.play().catch(() => {});
  history.replaceState(null, "", `?conference=${encodeURIComponent(confId)}`);
}

function leave(message) {
  if (state.leaving) return;
  state.leaving = true;
  for (const [, peer] of state.peers) peer.call.hangup();
  state.peers.clear();
  if (state.confCall) state.confCall.hangup();
  state.confCall = null;
  if (state.client) state.client.disconnect();
  state.client = null;
  for (const key of [...state.tiles.keys()]) removeTile(key);
  state.participants = [];
  renderPeople();
  state.locked = false;
  $("moderation").hidden = true;
  $("room-view").hidden = true;
  $("room-info").hidden = true;
  $("join-view").hidden = false;
  $("join-button").disabled = false;
  $("join-error").textContent = message || "";
  setStatus("Not connected");
}

// -- controls ----------------------------------------------------------------------

function setMuted(muted) {
  state.muted = muted;
  for (const t of state.stream ? state.stream.getAudioTracks() : []) t.enabled = !muted;
  $("mute").setAttribute("aria-pressed", String(muted));
  $("mute-label").textContent = muted ? "Unmute" : "Mute";
  $("mute").title = muted ? "Unmute microphone" : "Mute microphone";
}

function setCameraOff(off) {
  state.cameraOff = off;
  for (const t of state.stream ? state.stream.getVideoTracks() : []) t.enabled = !off;
  $("camera").setAttribute("aria-pressed", String(off));
  $("camera-label").textContent = off ? "Camera on" : "Camera off";
}

$("mute").addEventListener("click", () => setMuted(!state.muted));
$("camera").addEventListener("click", () => setCameraOff(!state.cameraOff));
$("leave").addEventListener("click", () => leave("You left the conference."));
$("mute-all").addEventListener("click", () => moderate("mute_all", undefined, () => toast("Everyone else is muted")));
$("unmute-all").addEventListener("click", () => moderate("unmute_all", undefined, () => toast("Everyone is unmuted")));
$("lock-room").addEventListener("click", () => moderate(state.locked ? "unlock" : "lock", undefined, () => {
  state.locked = !state.locked;
  renderModeration();
  toast(state.locked ? "The room is locked: no one new can join" : "The room is unlocked");
}));
$("end-room").addEventListener("click", () => moderate("end"));

$("invite-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const number = $("invite-number").value.replace(/[\s().-]/g, "");
  if (!/^\+?[0-9]{3,15}$/.test(number)) { logInvite(`"${number}" is not a phone number`, "bad"); return; }
  if (!state.confCall) return;
  state.confCall.sendMessage(JSON.stringify({ type: "CALL_PARTICIPANT", number }));
  logInvite(`Calling ${number}…`);
  $("invite-number").value = "";
});

$("join-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  const confId = $("conference").value.trim();
  const signIn = !state.guests && !state.token && !state.loginToken;
  if (signIn && (!$("username").value.trim() || !$("password").value)) {
    $("join-error").textContent = "Enter your user name and password.";
    return;
  }
  if ((state.guests && !state.token && !name) || !/^[A-Za-z0-9]{1,32}$/.test(confId)) {
    $("join-error").textContent = "Enter your name and a conference ID of letters and digits.";
    return;
  }
  if (name) localStorage.setItem("callbridge-name", name);
  $("join-button").disabled = true;
  $("join-error").textContent = "";
  try {
    await join(name, confId, $("pin").value.trim());
  } catch (err) {
    state.leaving = false;
    leave(`Could not join: ${err && err.message ? err.message : err}`);
  }
});

/** The join form: a guest's name box, or (--guests off) a login form
 * (user name and password; none with a login link or a join token). */
function showLoginMode() {
  const byName = state.guests || !!state.token;
  $("name-label").hidden = !byName;
  $("name").required = byName;
  $("login-fields").hidden = byName || !!state.loginToken;
  $("login-hint").textContent = state.loginToken
    ? "Signing in with your login link."
    : "This server takes signed-in users only: log in, or open the login link you were sent.";
  if (state.loginToken && !byName) { $("login-fields").hidden = false; for (const id of ["username", "password"]) $(id).closest("label").hidden = true; }
}

// -- start -------------------------------------------------------------------------

(function init() {
  const params = new URLSearchParams(location.search);
  $("conference").value = params.get("conference") || String(1000 + Math.floor(Math.random() * 9000));
  $("name").value = params.get("name") || localStorage.getItem("callbridge-name") || "";
  state.token = params.get("token") || null;
  state.loginToken = params.get("login") || null;
  if (state.loginToken) history.replaceState(null, "", location.pathname + (params.get("conference") ? `?conference=${encodeURIComponent(params.get("conference"))}` : ""));
  fetch("/config.json").then((r) => r.json()).then((config) => {
    state.guests = config.guests !== false;
    showLoginMode();
  }).catch(() => {});
  openCamera().then((stream) => {
    state.stream = stream;
    $("preview").srcObject = stream;
  }).catch((err) => { $("join-error").textContent = `Camera and microphone are unavailable: ${err.message || err}`; });
})();
