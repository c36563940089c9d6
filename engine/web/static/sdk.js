// callbridge web SDK: an ES module, no framework, no build step.
//
//   import { Client, ClientEvents, CallEvents } from "/sdk.js";
//   const client = new Client();
//   await client.connect();                       // ws(s)://<engine of this module>/ws
//   await client.login("alice", "secret");        // or client.login({token})
//   const call = client.call({ number: "joinconf",
//                              customHeaders: { "X-Conference-Id": "42" } });
//   call.on(CallEvents.Connected, () => call.sendMessage("hello"));
//   call.on(CallEvents.MessageReceived, (e) => console.log(e.text));
//
//   // browser to browser, peer to peer (audio and video; the engine relays signalling):
//   const video = client.call({ number: "bob", video: true, direct: true });
//   video.on(CallEvents.EndpointAdded, (e) => { myVideo.srcObject = e.stream; });
//
//   // a room's participant (login with a join token from /api/v1), as moderator:
//   await client.login({ token: joinToken });     // client.room, .role, .permissions
//   await client.muteParticipant(id);             // the server checks the token's permissions
//   await client.removeParticipant(id); await client.muteAll(); await client.lockRoom(); await client.endRoom();
//
// The wire protocol is docs/sdk-protocol.md (version 1).

export const PROTOCOL_VERSION = 1;
export const VERSION = "0.1.0";

export const ClientEvents = Object.freeze({
  Connected: "Connected",         // the socket is up and greeted
  Disconnected: "Disconnected",   // the socket closed ({code, reason})
  ConnectionFailed: "ConnectionFailed",
  IncomingCall: "IncomingCall",   // ({call, headers, callerId, displayName}): call.answer() or call.reject()
  Error: "Error",                 // an error frame not tied to a request ({code, message})
});

export const CallEvents = Object.freeze({
  Ringing: "Ringing",             // progress 180
  Progress: "Progress",           // progress 183: early media (audio plays)
  Connected: "Connected",         // ({headers})
  Disconnected: "Disconnected",   // ({code, reason, headers})
  Failed: "Failed",               // ({code, reason, headers})
  MessageReceived: "MessageReceived", // ({text, headers})
  InfoReceived: "InfoReceived",   // ({mimeType, body, headers})
  EndpointAdded: "EndpointAdded", // ({stream, element}) remote media arrived
  EndpointRemoved: "EndpointRemoved", // ({stream})
  Error: "Error",                 // an error frame about this call ({code, message})
  ICETimeout: "ICETimeout",       // a direct call's ICE failed; a restart is tried ({attempt})
  Transferred: "Transferred",     // the scenario moved this call: you now hear another party ({call})
});

/** ICE restarts a direct call tries before it ends, and how long each may take (ms). */
const ICE_RESTARTS = 2;
const ICE_RESTART_WAIT = 10000;

class Emitter {
  constructor() { this._listeners = new Map(); }
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return this;
  }
  addEventListener(name, fn) { return this.on(name, fn); }
  off(name, fn) {
    const set = this._listeners.get(name);
    if (set) { if (fn) set.delete(fn); else set.clear(); }
    return this;
  }
  removeEventListener(name, fn) { return this.off(name, fn); }
  once(name, fn) {
    const wrap = (e) => { this.off(name, wrap); fn(e); };
    return this.on(name, wrap);
  }
  /** A promise of the next `name` event (rejects after `timeoutMs`). */
  waitFor(name, timeoutMs = 0) {
    return new Promise((resolve, reject) => {
      let timer = null;
      const fn = (e) => { if (timer) clearTimeout(timer); resolve(e); };
      this.once(name, fn);
      if (timeoutMs > 0) timer = setTimeout(() => { this.off(name, fn); reject(new Error(`no ${name} within ${timeoutMs} ms`)); }, timeoutMs);
    });
  }
  _emit(name, event = {}) {
    const set = this._listeners.get(name);
    if (!set) return;
    const payload = Object.assign({ name }, event);
    for (const fn of [...set]) {
      try { fn(payload); } catch (err) { console.error(`callbridge: ${name} listener failed`, err); }
    }
  }
}

export class SdkError extends Error {
  constructor(code, message) { super(message); this.code = code; this.name = "SdkError"; }
}

function randomId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class Call extends Emitter {
  constructor(client, id, options) {
    super();
    this.client = client;
    this.id = id;
    this.number = options.number;
    this.customHeaders = options.customHeaders || {};
    this.video = !!options.video;
    this.audio = options.audio !== false;
    this.direct = !!options.direct;
    this.state = "NEW";
    this.incoming = !!options.offer;
    this._offer = options.offer || null;
    this.callerId = options.callerid || null;
    this.displayName = options.display_name || null;
    this.peerConnection = null;
    this.localStream = null;
    this.remoteStreams = [];
    this._elements = [];
    this._pendingIce = [];
    this._remoteIce = [];
    this._sent = false;
    this._muted = false;
  }

  get active() { return !["DISCONNECTED", "FAILED"].includes(this.state); }

  /** The tracks this call sends: of the client's shared stream, only the
   * kinds the call asked for (a conference call sends no video to the engine). */
  _localTracks() {
    return this.localStream.getTracks().filter((t) => (t.kind === "audio" && this.audio) || (t.kind === "video" && this.video));
  }

  async _openMedia() {
    const shared = this.client.localStream;
    if (shared && (!this.video || shared.getVideoTracks().length)) return shared;
    return navigator.mediaDevices.getUserMedia({ audio: this.audio, video: this.video });
  }

  async _start() {
    const client = this.client;
    try {
      this.localStream = await this._openMedia();
      const pc = new RTCPeerConnection({ iceServers: client.iceServers });
      this.peerConnection = pc;
      for (const track of this._localTracks()) pc.addTrack(track, this.localStream);
      pc.onicecandidate = (e) => this._sendIce(e.candidate ? e.candidate.toJSON() : null);
      pc.ontrack = (e) => this._addRemote(e.streams[0] || new MediaStream([e.track]));
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "connected") this._iceRecovered();
        if (pc.connectionState === "failed" && this.active && !this._iceFailed()) {
          this._end("Failed", "FAILED", { code: 503, reason: "WebRTC connection failed" }, true);
        }
      };
      if (this.state === "DISCONNECTED") return; // hung up while the microphone opened
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      if (!this.active) return;
      this.state = "PROGRESSING";
      client._send({
        type: "call", call: this.id, number: this.number, headers: this.customHeaders,
        sdp: pc.localDescription.sdp, audio: this.audio, video: this.video,
      });
      this._sent = true;
      for (const c of this._pendingIce.splice(0)) this._sendIce(c);
    } catch (err) {
      this._end("Failed", "FAILED", { code: 500, reason: String(err && err.message || err) }, false);
    }
  }

  /** A connected direct call's ICE failed: tell the other browser
   * (`ice_failed`, relayed by the engine) so that ICE restarts: the caller
   * sends an ICE-restart offer, the callee asks the caller for one. At most
   * ICE_RESTARTS tries, each given ICE_RESTART_WAIT ms; returns whether a
   * retry runs (otherwise the call ends as before). */
  _iceFailed() {
    if (!this.direct || this.state !== "CONNECTED") return false;
    if (this._restartTimer) return true;  // a retry already runs
    this._restarts = (this._restarts || 0) + 1;
    if (this._restarts > ICE_RESTARTS) return false;
    this._emit(CallEvents.ICETimeout, { call: this, attempt: this._restarts });
    this._restartTimer = setTimeout(() => {
      this._restartTimer = null;
      const pc = this.peerConnection;
      if (this.active && pc && pc.connectionState !== "connected" && !this._iceFailed()) {
        this._end("Disconnected", "DISCONNECTED", { code: 503, reason: "WebRTC connection failed" }, true);
      }
    }, ICE_RESTART_WAIT);
    if (this.incoming) this.client._send({ type: "ice_failed", call: this.id });
    else this._restartIce().catch((err) => console.warn("callbridge: ICE restart failed", err));
    return true;
  }

  _iceRecovered() {
    if (this._restartTimer) { clearTimeout(this._restartTimer); this._restartTimer = null; }
  }

  /** The caller's side of an ICE restart: a new offer with new ICE credentials. */
  async _restartIce() {
    const pc = this.peerConnection;
    if (!pc || !this.active || pc.signalingState !== "stable") return;
    const offer = await pc.createOffer({ iceRestart: true });
    await pc.setLocalDescription(offer);
    this.client._send({ type: "ice_failed", call: this.id, sdp: pc.localDescription.sdp, sdp_type: "offer" });
  }

  /** The other browser's `ice_failed`: answer its ICE-restart offer, take
   * the answer to ours, or (the caller, asked without SDP) restart. */
  async _onIceFailed(frame) {
    const pc = this.peerConnection;
    if (!pc || !this.active || !this.direct) return;
    if (frame.sdp_type === "offer") {
      await pc.setRemoteDescription({ type: "offer", sdp: frame.sdp });
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      this.client._send({ type: "ice_failed", call: this.id, sdp: pc.localDescription.sdp, sdp_type: "answer" });
      this._flushRemoteIce();
    } else if (frame.sdp_type === "answer") {
      if (pc.signalingState === "have-local-offer") await pc.setRemoteDescription({ type: "answer", sdp: frame.sdp });
      this._flushRemoteIce();
    } else if (!this.incoming) {
      await this._restartIce();
    }
  }

  _sendIce(candidate) {
    if (!this._sent) { this._pendingIce.push(candidate); return; }
    if (this.active) this.client._send({ type: "ice", call: this.id, candidate });
  }

  _addRemoteIce(candidate) {
    const pc = this.peerConnection;
    if (!pc || !pc.remoteDescription) { this._remoteIce.push(candidate); return; }
    pc.addIceCandidate(candidate).catch((err) => console.warn("callbridge: remote candidate refused", err));
  }

  _flushRemoteIce() {
    for (const c of this._remoteIce.splice(0)) this._addRemoteIce(c);
  }

  _addRemote(stream) {
    if (this.remoteStreams.includes(stream)) return;
    this.remoteStreams.push(stream);
    let element = null;
    if (this.client.renderRemoteAudio && typeof document !== "undefined") {
      // Chromium reports no inbound audio level unless the stream plays somewhere.
      element = document.createElement("audio");
      element.autoplay = true;
      element.srcObject = stream;
      element.dataset.callbridgeCall = this.id;
      element.style.display = "none";
      document.body.appendChild(element);
      element.play().catch(() => {});
      this._elements.push(element);
    }
    this._emit(CallEvents.EndpointAdded, { call: this, stream, element });
  }

  async _setAnswer(sdp) {
    const pc = this.peerConnection;
    if (!pc || pc.signalingState !== "have-local-offer") return;
    await pc.setRemoteDescription({ type: "answer", sdp });
    this._flushRemoteIce();
  }

  async _onFrame(frame) {
    switch (frame.type) {
      case "progress":
        if (frame.sdp) await this._setAnswer(frame.sdp);
        this._emit(frame.code === 180 ? CallEvents.Ringing : CallEvents.Progress,
          { call: this, code: frame.code, reason: frame.reason, headers: frame.headers || {} });
        break;
      case "connected":
        if (frame.sdp) await this._setAnswer(frame.sdp);
        this.state = "CONNECTED";
        this._emit(CallEvents.Connected, { call: this, headers: frame.headers || {} });
        break;
      case "failed":
        this._end(this.state === "CONNECTED" ? "Disconnected" : "Failed",
          this.state === "CONNECTED" ? "DISCONNECTED" : "FAILED", frame, false);
        break;
      case "hangup":
        this._end("Disconnected", "DISCONNECTED", frame, false);
        break;
      case "message":
        this._emit(CallEvents.MessageReceived, { call: this, text: frame.text, headers: frame.headers || {} });
        break;
      case "ice":  // the other browser's candidate, in a direct call
        if (frame.candidate) this._addRemoteIce(frame.candidate);
        break;
      case "ice_failed":  // the other browser's ICE failed: restart ICE (direct calls)
        await this._onIceFailed(frame);
        break;
      case "transferred":  // transfer_to re-bridged this call to another party
        this._emit(CallEvents.Transferred, { call: this });
        break;
      case "info":
        this._emit(CallEvents.InfoReceived, { call: this, mimeType: frame.mime_type, body: frame.body, headers: frame.headers || {} });
        break;
      case "error":
        this._emit(CallEvents.Error, { call: this, code: frame.code, message: frame.message });
        if (this.state !== "CONNECTED" && ["bad_frame", "not_logged_in", "call_exists", "too_many_calls", "internal"].includes(frame.code)) {
          this._end("Failed", "FAILED", { code: 400, reason: frame.message }, false);
        }
        break;
    }
  }

  /** Answer an incoming call (IncomingCall): opens the microphone (and the
   * camera if `video`; by default a direct video call is answered with video). */
  async answer({ video, headers = {} } = {}) {
    if (!this.incoming || this.state !== "RINGING") throw new SdkError("bad_state", "only a ringing incoming call can be answered");
    this.state = "ANSWERING";
    const client = this.client;
    try {
      this.video = video === undefined ? (this.direct && this.video) : !!video;
      this.audio = true;
      this.localStream = await this._openMedia();
      const pc = new RTCPeerConnection({ iceServers: client.iceServers });
      this.peerConnection = pc;
      pc.onicecandidate = (e) => this._sendIce(e.candidate ? e.candidate.toJSON() : null);
      pc.ontrack = (e) => this._addRemote(e.streams[0] || new MediaStream([e.track]));
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "connected") this._iceRecovered();
        if (pc.connectionState === "failed" && this.active && !this._iceFailed()) {
          this._end("Disconnected", "DISCONNECTED", { code: 503, reason: "WebRTC connection failed" }, true);
        }
      };
      await pc.setRemoteDescription({ type: "offer", sdp: this._offer });
      for (const track of this._localTracks()) pc.addTrack(track, this.localStream);
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      this._flushRemoteIce();
      if (!this.active) return;
      client._send({ type: "answer", call: this.id, sdp: pc.localDescription.sdp, headers });
      this._sent = true;
      for (const c of this._pendingIce.splice(0)) this._sendIce(c);
      this.state = "CONNECTED";
      this._emit(CallEvents.Connected, { call: this, headers: {} });
    } catch (err) {
      this._end("Failed", "FAILED", { code: 500, reason: String(err && err.message || err) }, true);
    }
  }

  /** Refuse an incoming call (the scenario sees Failed with `code`, default 486). */
  reject(code = 486, headers = {}) {
    if (!this.incoming || this.state !== "RINGING") throw new SdkError("bad_state", "only a ringing incoming call can be rejected");
    this.client._send({ type: "reject", call: this.id, code, headers });
    this._end("Disconnected", "DISCONNECTED", { code, reason: "Rejected" }, false);
  }

  /** Send a text message to the scenario (its MessageReceived). */
  sendMessage(text, headers = {}) {
    if (this.state !== "CONNECTED") throw new SdkError("bad_state", "messages need a connected call");
    this.client._send({ type: "message", call: this.id, text: String(text), headers });
  }

  /** Send DTMF digits (0-9 * # A-D) to the scenario (ToneReceived, mode "signalling"). */
  sendTone(tones) {
    if (!this.active) throw new SdkError("bad_state", "the call has ended");
    this.client._send({ type: "dtmf", call: this.id, tones: String(tones) });
  }

  /** Stop sending microphone audio (the track stays, muted). */
  muteMicrophone() { this._setMuted(true); }
  unmuteMicrophone() { this._setMuted(false); }
  mute() { this._setMuted(true); }
  unmute() { this._setMuted(false); }
  get muted() { return this._muted; }
  _setMuted(muted) {
    this._muted = muted;
    if (this.localStream) for (const t of this.localStream.getAudioTracks()) t.enabled = !muted;
  }

  /** Stop or start sending camera video. */
  sendVideo(on) {
    if (this.localStream) for (const t of this.localStream.getVideoTracks()) t.enabled = !!on;
  }

  /** End the call (or cancel it while it rings). */
  hangup(headers = {}) {
    if (!this.active) return;
    if (this._sent || this.incoming) this.client._send({ type: "hangup", call: this.id, headers });
    const connected = this.state === "CONNECTED";
    this._end("Disconnected", "DISCONNECTED", { code: connected ? 200 : 487, reason: connected ? "Hangup" : "Cancelled" }, false);
  }

  _end(eventName, state, frame, tellServer) {
    if (!this.active) return;
    if (tellServer && (this._sent || this.incoming)) this.client._send({ type: "hangup", call: this.id });
    this.state = state;
    this.client.calls.delete(this.id);
    for (const el of this._elements.splice(0)) { el.srcObject = null; el.remove(); }
    for (const stream of this.remoteStreams) this._emit(CallEvents.EndpointRemoved, { call: this, stream });
    if (this.peerConnection) this.peerConnection.close();
    if (this.localStream && this.localStream !== this.client.localStream) {
      for (const t of this.localStream.getTracks()) t.stop();
    }
    this._emit(eventName, { call: this, code: frame.code, reason: frame.reason, headers: frame.headers || {} });
  }
}

export class Client extends Emitter {
  /**
   * @param {object} [options]
   * @param {RTCIceServer[]} [options.iceServers] default [] (the engine is reachable directly)
   * @param {boolean} [options.renderRemoteAudio] play remote audio in hidden <audio> elements (default true)
   * @param {number} [options.pingInterval] seconds between keepalive pings (default 15)
   * @param {MediaStream} [options.localStream] use this stream instead of getUserMedia
   */
  constructor(options = {}) {
    super();
    this.iceServers = options.iceServers || [];
    this.renderRemoteAudio = options.renderRemoteAudio !== false;
    this.pingInterval = options.pingInterval || 15;
    this.localStream = options.localStream || null;
    this.calls = new Map();
    this.username = null;
    this.displayName = null;
    /** The join token's room, role and permissions (null, null, [] after a password login). */
    this.room = null;
    this.role = null;
    this.permissions = [];
    this.socket = null;
    this._pending = new Map();
    this._pingTimer = null;
    this._pongDeadline = null;
  }

  get connected() { return !!this.socket && this.socket.readyState === WebSocket.OPEN; }

  /**
   * Open the socket and greet the engine. Resolves with the engine's hello frame.
   * @param {string} [url] default: /ws on the engine this module was loaded from
   */
  connect(url) {
    if (!url) {
      const here = new URL("/ws", import.meta.url);
      here.protocol = here.protocol === "https:" ? "wss:" : "ws:";
      url = here.href;
    }
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url);
      this.socket = socket;
      let greeted = false;
      socket.onopen = () => {
        this._request({ type: "hello", version: PROTOCOL_VERSION, client: `callbridge-sdk/${VERSION}` })
          .then((hello) => {
            greeted = true;
            this._startPing();
            this._emit(ClientEvents.Connected, { server: hello.server, version: hello.version });
            resolve(hello);
          }, (err) => { reject(err); socket.close(); });
      };
      socket.onmessage = (e) => this._onMessage(e.data);
      socket.onerror = () => {};
      socket.onclose = (e) => {
        this._stopPing();
        for (const [, p] of this._pending) p.reject(new SdkError("disconnected", "the socket closed"));
        this._pending.clear();
        for (const call of [...this.calls.values()]) call._end("Disconnected", "DISCONNECTED", { code: 408, reason: "Connection Lost" }, false);
        if (!greeted) {
          this._emit(ClientEvents.ConnectionFailed, { code: e.code, reason: e.reason });
          reject(new SdkError("connection_failed", `cannot connect to ${url}`));
        } else {
          this._emit(ClientEvents.Disconnected, { code: e.code, reason: e.reason });
        }
        this.socket = null;
        this.username = null;
        this.room = null;
        this.role = null;
        this.permissions = [];
      };
    });
  }

  /** Close the socket (every call ends). */
  disconnect() { if (this.socket) this.socket.close(1000); }

  /** Log in with a password, `login({token})` with a one-time token, or
   * `login({guest: "Display Name"})` as a guest (a random user name for
   * this socket's life, when the engine takes guests). */
  async login(username, password) {
    let frame;
    if (typeof username === "object" && username !== null) {
      if (username.token) frame = { type: "login", token: username.token };
      else if (username.guest) frame = { type: "login", guest: String(username.guest) };
      else frame = { type: "login", username: username.username, password: username.password };
    } else {
      frame = { type: "login", username, password };
    }
    const ok = await this._request(frame);
    this.username = ok.username;
    this.displayName = ok.display_name;
    this.room = ok.room || null;
    this.role = ok.role || null;
    this.permissions = ok.permissions || [];
    return ok;
  }

  /** Whether the join token grants `permission` (`mute_self`, `mute_others`,
   * `remove`, `lock`, `end`, `record`): for showing controls; the engine checks anyway. */
  can(permission) { return this.permissions.includes(permission); }

  /**
   * Moderate the join token's room (the `moderate` frame): `action` is
   * `mute`, `unmute`, `remove` (these name a `participant`, an id of
   * GET /api/v1/rooms/{room} and of the conference's participant list),
   * `mute_all`, `unmute_all`, `start_recording`, `stop_recording`,
   * `lock`, `unlock` or `end`. Resolves with the `moderated` frame; rejects
   * with an SdkError whose code is `forbidden` (the token lacks the
   * permission, or the login was not with a join token),
   * `unknown_participant` or `bad_frame`. `mute_all` and `unmute_all`
   * act on everyone but this moderator's own legs.
   */
  moderate(action, participant) {
    const frame = { type: "moderate", action: String(action) };
    if (participant !== undefined && participant !== null) frame.participant = String(participant);
    return this._request(frame);
  }

  muteParticipant(participant) { return this.moderate("mute", participant); }
  unmuteParticipant(participant) { return this.moderate("unmute", participant); }
  removeParticipant(participant) { return this.moderate("remove", participant); }
  /** Mute (or, `unmuteAll()`, unmute) every participant but this moderator. */
  muteAll() { return this.moderate("mute_all"); }
  unmuteAll() { return this.moderate("unmute_all"); }
  /** Start or stop recording the room's conference (the `record` permission). */
  startRecording() { return this.moderate("start_recording"); }
  stopRecording() { return this.moderate("stop_recording"); }
  lockRoom() { return this.moderate("lock"); }
  unlockRoom() { return this.moderate("unlock"); }
  endRoom() { return this.moderate("end"); }

  /**
   * Call a number; the engine routes it by its rules like a SIP call.
   * `direct: true` asks for a browser-to-browser call to the user `number`
   * (header X-DirectCall; the shipped P2P rule forwards it to that user's
   * browser, and media goes peer to peer).
   * Returns the Call at once: attach listeners, then wait for Connected.
   */
  call({ number, customHeaders = {}, video = false, audio = true, direct = false }) {
    if (!this.connected) throw new SdkError("disconnected", "connect() first");
    if (!this.username) throw new SdkError("not_logged_in", "login() first");
    const headers = direct ? Object.assign({ "X-DirectCall": "true" }, customHeaders) : customHeaders;
    const call = new Call(this, randomId(), { number: String(number), customHeaders: headers, video, audio, direct });
    this.calls.set(call.id, call);
    call._start();
    return call;
  }

  _send(frame) {
    if (this.connected) this.socket.send(JSON.stringify(frame));
  }

  _request(frame, timeoutMs = 10000) {
    const ref = randomId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this._pending.delete(ref); reject(new SdkError("timeout", `${frame.type}: no answer`)); }, timeoutMs);
      this._pending.set(ref, {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this._send(Object.assign({ ref }, frame));
    });
  }

  _startPing() {
    this._stopPing();
    this._pingTimer = setInterval(() => {
      if (this._pongDeadline && Date.now() > this._pongDeadline) {
        this.socket && this.socket.close(4000, "keepalive timeout");
        return;
      }
      this._pongDeadline = Date.now() + this.pingInterval * 1000;
      this._send({ type: "ping", ts: Date.now() });
    }, this.pingInterval * 1000);
  }

  _stopPing() {
    if (this._pingTimer) clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._pongDeadline = null;
  }

  _onMessage(data) {
    let frame;
    try { frame = JSON.parse(data); } catch (err) { return; }
    if (frame.type === "pong") { this._pongDeadline = null; }
    const pending = frame.ref !== undefined ? this._pending.get(frame.ref) : undefined;
    if (pending) {
      this._pending.delete(frame.ref);
      if (frame.type === "error") pending.reject(new SdkError(frame.code, frame.message));
      else pending.resolve(frame);
      return;
    }
    if (frame.type === "incoming") {
      const call = new Call(this, frame.call, { number: this.username, customHeaders: frame.headers || {},
        offer: frame.sdp, callerid: frame.callerid, display_name: frame.display_name,
        direct: !!frame.direct, video: !!frame.video });
      call.state = "RINGING";
      this.calls.set(call.id, call);
      this._emit(ClientEvents.IncomingCall, { call, headers: frame.headers || {}, callerId: frame.callerid,
        displayName: frame.display_name, direct: call.direct, video: call.video });
      return;
    }
    if (frame.call !== undefined) {
      const call = this.calls.get(frame.call);
      if (call) {
        call._onFrame(frame).catch((err) => console.error("callbridge: call frame failed", err));
        return;
      }
    }
    if (frame.type === "error") this._emit(ClientEvents.Error, { code: frame.code, message: frame.message, call: frame.call });
  }
}

/** `new Client(options)`, for those who prefer a function. */
export function createClient(options) { return new Client(options); }
