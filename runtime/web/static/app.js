// The playground page: pick an agent, press one button, talk.
//
// Wiring only: audio.js moves sound, call.js speaks the stream protocol, api.js the /v1
// API, metrics.js draws the waterfall. State the tests (and curious users) can read is
// mirrored on <body> as data attributes: call state, frames sent/played, output level.

import { Api, ApiError, Unreachable, health, loadConfig } from "./api.js";
import { AudioEngine, AudioError } from "./audio.js";
import { CallSocket, isNormalEnding } from "./call.js";
import { LatencyBoard } from "./metrics.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("worker-status"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerAction: $("banner-action"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
  agentSelect: $("agent-select"),
  callButton: $("call-button"),
  callStatus: $("call-status"),
  micMeter: $("mic-meter"),
  outMeter: $("out-meter"),
  conversation: $("conversation"),
  empty: $("conversation-empty"),
  form: $("agent-form"),
  save: $("save-button"),
  saveStatus: $("save-status"),
  voiceProvider: $("f-voice-provider"),
  fields: {
    prompt: $("f-prompt"),
    firstMessage: $("f-first-message"),
    voice: $("f-voice"),
    intEnabled: $("f-int-enabled"),
    intDuration: $("f-int-duration"),
    intWords: $("f-int-words"),
    intResume: $("f-int-resume"),
    intTimeout: $("f-int-timeout"),
  },
};
const HEALTH_EVERY_MS = 4000;
const SEGMENT_GAP_MS = 100; // agent audio after this much silence starts a new piece
const KEY_STORAGE = "rymi.playground.key";
const AGENT_STORAGE = "rymi.playground.agent";

const state = {
  config: null,
  api: null,
  agents: [],
  agent: null,
  catalog: null, // GET /v1/agents/llm-options, for the voice menu
  workerUp: null,
  call: null, // the live session, see startCall()
  banner: null, // the kind of the banner shown
};
const board = new LatencyBoard($("latency-summary"), $("latency-turns"));

// ------------------------------------------------------------------ banner and status

function showBanner(kind, text, { action = null, onAction = null, askKey = false, level = "error" } = {}) {
  state.banner = kind;
  ui.banner.hidden = false;
  ui.banner.dataset.kind = kind;
  ui.banner.dataset.level = level;
  ui.bannerText.textContent = text;
  ui.keyForm.hidden = !askKey;
  ui.bannerAction.hidden = !action;
  ui.bannerAction.textContent = action || "";
  ui.bannerAction.onclick = onAction;
}

function hideBanner(kind = null) {
  if (kind && state.banner !== kind) return;
  state.banner = null;
  ui.banner.hidden = true;
}

function setWorkerUp(up) {
  if (state.workerUp === up) return;
  state.workerUp = up;
  ui.status.dataset.state = up ? "up" : "down";
  ui.status.textContent = up ? `worker online · ${location.host}` : "worker unreachable";
}

function setCallState(name, text) {
  document.body.dataset.callState = name;
  if (text !== undefined) ui.callStatus.textContent = text;
  const busy = name === "connecting" || name === "ending";
  ui.callButton.disabled = busy || !state.agent;
  ui.callButton.classList.toggle("live", name === "live");
  ui.callButton.textContent =
    name === "live" ? "Hang up" : name === "connecting" ? "Connecting…" : name === "ending" ? "Hanging up…" : "Start call";
  ui.agentSelect.disabled = name !== "idle" || !state.agents.length;
}

function unreachableBanner() {
  showBanner(
    "unreachable",
    `Cannot reach the worker at ${location.origin}. Is \`rymi-worker dev\` still running? ` +
      "This page reconnects by itself when it is back.",
    { action: "Retry now", onAction: () => boot() },
  );
}

// ------------------------------------------------------------------ boot, health, agents

async function boot() {
  try {
    state.config = await loadConfig();
    setWorkerUp(true);
  } catch (err) {
    setWorkerUp(false);
    if (err instanceof Unreachable) unreachableBanner();
    else showBanner("config", `The worker did not give the page its settings: ${err.message}`);
    return;
  }
  const key = state.config.apiKey || sessionStorage.getItem(KEY_STORAGE);
  if (!key) {
    askForKey(state.config.keyHint || "Paste the API key printed by `rymi-worker dev`.");
    return;
  }
  state.api = new Api(state.config.apiBase, key);
  await loadAgents();
}

function askForKey(text) {
  showBanner("key", text, { askKey: true, level: "info" });
  ui.keyInput.focus();
}

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  ui.keyInput.value = "";
  hideBanner("key");
  state.api = new Api(state.config.apiBase, key);
  loadAgents();
});

async function loadAgents() {
  try {
    state.agents = await state.api.agents();
  } catch (err) {
    if (err instanceof Unreachable) {
      setWorkerUp(false);
      unreachableBanner();
    } else if (err instanceof ApiError && err.status === 401) {
      sessionStorage.removeItem(KEY_STORAGE);
      askForKey("The worker refused this API key. Paste the key printed by `rymi-worker dev`.");
    } else {
      showBanner("agents", `Could not list the agents: ${err.message}`, { action: "Retry", onAction: loadAgents });
    }
    return;
  }
  hideBanner("unreachable");
  hideBanner("agents");
  const select = ui.agentSelect;
  select.replaceChildren();
  for (const agent of state.agents) {
    const option = document.createElement("option");
    option.value = agent.id;
    option.textContent = agent.name ? `${agent.name}` : agent.id;
    select.append(option);
  }
  if (!state.agents.length) {
    const option = document.createElement("option");
    option.textContent = "no agents: create one with POST /v1/agents";
    select.append(option);
    state.agent = null;
  } else {
    const wanted = new URLSearchParams(location.search).get("agent") || localStorage.getItem(AGENT_STORAGE);
    const agent = state.agents.find((a) => a.id === wanted) || state.agents[0];
    select.value = agent.id;
    selectAgent(agent);
  }
  setCallState(document.body.dataset.callState || "idle");
}

ui.agentSelect.addEventListener("change", () => {
  const agent = state.agents.find((a) => a.id === ui.agentSelect.value);
  if (agent) selectAgent(agent);
});

async function healthLoop() {
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, HEALTH_EVERY_MS));
    let up = false;
    try {
      up = await health();
    } catch {
      up = false;
    }
    const wasUp = state.workerUp;
    setWorkerUp(up);
    // a "dropped" banner stays: it says what happened to the call; the pill says the rest
    if (!up && !state.call && state.banner !== "dropped") unreachableBanner();
    if (up && wasUp === false) {
      hideBanner("unreachable");
      if (!state.api || !state.agents.length) boot();
    }
  }
}

// ------------------------------------------------------------------ agent settings

function selectAgent(agent) {
  state.agent = agent;
  localStorage.setItem(AGENT_STORAGE, agent.id);
  const f = ui.fields;
  const interruption = agent.interruption || {};
  f.prompt.value = agent.prompt ?? "";
  f.firstMessage.value = agent.first_message ?? "";
  ui.voiceProvider.textContent = agent.tts && agent.tts.provider ? `(${agent.tts.provider})` : "";
  fillVoices(agent, []);
  f.intEnabled.checked = interruption.enabled ?? true;
  f.intDuration.value = interruption.min_duration_ms ?? 400;
  f.intWords.value = interruption.min_words ?? 0;
  f.intResume.checked = interruption.resume_false_interruption ?? true;
  f.intTimeout.value = interruption.false_interruption_timeout_ms ?? 1500;
  ui.saveStatus.textContent = "";
  ui.save.disabled = true;
  loadVoices(agent);
}

/** The voice menu: engine default, the engine's catalogue voices, and the current one. */
function fillVoices(agent, voices) {
  const current = (agent.tts && agent.tts.voice) || "";
  const select = ui.fields.voice;
  const names = [...new Set([...(current ? [current] : []), ...voices])];
  const options = [new Option("engine default", "")];
  for (const name of names) options.push(new Option(name, name));
  select.replaceChildren(...options);
  select.value = current;
}

async function loadVoices(agent) {
  const provider = agent.tts && agent.tts.provider;
  if (!provider || !state.api) return;
  try {
    state.catalog ??= await state.api.call("GET", "/v1/agents/llm-options");
  } catch {
    return; // no catalogue: the menu keeps the current voice and the default
  }
  const engine = (state.catalog.tts || []).find((e) => e.name === provider);
  if (engine && state.agent === agent) fillVoices(agent, engine.voices || []);
}

function intField(input) {
  const n = Number.parseInt(input.value, 10);
  return Number.isFinite(n) ? n : undefined;
}

/** Only what this form edits: the rest of the agent is left as it is. */
function formChanges() {
  const f = ui.fields;
  const agent = state.agent;
  const voice = f.voice.value.trim();
  const firstMessage = f.firstMessage.value.trim();
  const interruption = { ...(agent.interruption || {}) };
  interruption.enabled = f.intEnabled.checked;
  interruption.resume_false_interruption = f.intResume.checked;
  for (const [key, input] of [
    ["min_duration_ms", f.intDuration],
    ["min_words", f.intWords],
    ["false_interruption_timeout_ms", f.intTimeout],
  ]) {
    const value = intField(input);
    if (value !== undefined) interruption[key] = value;
  }
  return {
    prompt: f.prompt.value,
    first_message: firstMessage || null,
    tts: { ...(agent.tts || {}), voice: voice || null },
    interruption,
  };
}

ui.form.addEventListener("input", () => {
  ui.save.disabled = !state.agent;
  ui.saveStatus.textContent = "unsaved changes";
  ui.saveStatus.dataset.state = "dirty";
});

ui.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!state.agent || !state.api) return;
  ui.save.disabled = true;
  ui.saveStatus.textContent = "saving…";
  ui.saveStatus.dataset.state = "saving";
  try {
    const updated = await state.api.updateAgent(state.agent.id, formChanges());
    const merged = { ...state.agent, ...(updated && updated.id ? updated : formChanges()) };
    state.agents = state.agents.map((a) => (a.id === merged.id ? merged : a));
    selectAgent(merged);
    ui.saveStatus.textContent = state.call ? "saved · applies to the next call" : "saved";
    ui.saveStatus.dataset.state = "saved";
  } catch (err) {
    ui.save.disabled = false;
    ui.saveStatus.dataset.state = "error";
    ui.saveStatus.textContent =
      err instanceof Unreachable ? "not saved: the worker is unreachable" : `not saved: ${err.message}`;
  }
});

// ------------------------------------------------------------------ conversation view

const view = {
  pendingUser: null, // {el, finals: string[]} until the user's words are committed
  agent: new Map(), // turn_id -> {el, text, textEl}
  playingTurn: null,
};

function resetConversation() {
  ui.conversation.replaceChildren();
  view.pendingUser = null;
  view.agent.clear();
  view.playingTurn = null;
  ui.empty.hidden = false;
}

function append(node) {
  ui.empty.hidden = true;
  ui.conversation.append(node);
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
  node.scrollIntoView?.({ block: "nearest" });
}

function bubble(role, className = "") {
  const li = document.createElement("li");
  li.className = `msg ${role} ${className}`.trim();
  li.dataset.role = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Agent";
  const text = document.createElement("p");
  text.className = "text";
  li.append(who, text);
  append(li);
  return { el: li, textEl: text };
}

function note(text, level = "info") {
  const li = document.createElement("li");
  li.className = `note ${level}`;
  li.textContent = text;
  append(li);
}

function userPartial(text) {
  if (!view.pendingUser) view.pendingUser = { ...bubble("user", "partial"), finals: [] };
  const p = view.pendingUser;
  p.el.classList.add("partial");
  p.textEl.replaceChildren();
  const done = p.finals.join(" ");
  if (done) p.textEl.append(document.createTextNode(`${done} `));
  const live = document.createElement("span");
  live.className = "live";
  live.textContent = text;
  p.textEl.append(live);
}

function userFinal(text) {
  if (!text) return;
  if (!view.pendingUser) view.pendingUser = { ...bubble("user"), finals: [] };
  const p = view.pendingUser;
  p.finals.push(text);
  p.el.classList.remove("partial");
  p.textEl.textContent = p.finals.join(" ");
}

function userCommitted(segment) {
  const p = view.pendingUser || bubble("user");
  view.pendingUser = null;
  p.el.classList.remove("partial");
  p.el.classList.add("final");
  p.el.dataset.turn = String(segment.turn_id);
  p.textEl.textContent = segment.text;
}

function agentBubble(turnId) {
  let b = view.agent.get(turnId);
  if (!b) {
    b = { ...bubble("agent"), text: "" };
    b.el.dataset.turn = String(turnId);
    view.agent.set(turnId, b);
  }
  return b;
}

function agentText(turnId, chunk) {
  const b = agentBubble(turnId);
  b.text = b.text ? `${b.text} ${chunk}` : chunk;
  if (!b.el.classList.contains("final")) b.textEl.textContent = b.text;
}

function agentCommitted(segment) {
  const b = agentBubble(segment.turn_id);
  b.el.classList.add("final");
  b.textEl.replaceChildren();
  const heard = segment.text || "";
  b.textEl.append(document.createTextNode(heard));
  if (segment.interrupted) {
    const full = b.text || "";
    const rest = full.startsWith(heard) ? full.slice(heard.length) : "";
    if (rest.trim()) {
      const cut = document.createElement("span");
      cut.className = "unheard";
      cut.title = "not played: the agent was interrupted here";
      cut.textContent = rest;
      b.textEl.append(cut);
    }
    markInterrupted(segment.turn_id);
  }
}

function markInterrupted(turnId, playedS) {
  const b = agentBubble(turnId);
  b.el.classList.add("interrupted");
  let badge = b.el.querySelector(".badge");
  if (!badge) {
    badge = document.createElement("span");
    badge.className = "badge";
    b.el.querySelector(".who").after(badge);
  }
  if (playedS !== undefined || !badge.textContent) {
    badge.textContent =
      typeof playedS === "number" ? `interrupted after ${playedS.toFixed(1)} s` : "interrupted";
  }
}

// ------------------------------------------------------------------ the call

function startCall() {
  if (state.call || !state.agent) return;
  hideBanner();
  resetConversation();
  board.reset();
  const session = {
    engine: null,
    socket: null,
    callId: null,
    agentName: state.agent.name || state.agent.id,
    hangingUp: false,
    failedStatus: null,
    lastAudioAt: -Infinity,
    afterClear: true,
    nextTag: 1,
    pieces: new Map(), // tag -> {receivedAt, playedAt, turn}
    lastTag: null,
    turnPiece: new Map(), // turn_id -> tag
    framesPlayed: 0,
  };
  state.call = session;
  setCallState("connecting", "Opening the microphone…");
  runCall(session).catch((err) => {
    console.error(err);
    finishCall(session, "failed", `The call could not start: ${err.message}`);
  });
}

async function runCall(session) {
  session.engine = new AudioEngine({
    onMicFrame: (pcm) => session.socket?.sendAudio(pcm),
    onStarted: (tag, playedAt) => piecePlayed(session, tag, playedAt),
    onMark: (name) => session.socket?.send({ type: "mark_played", name }),
    onStats: (stats) => showStats(session, stats),
    onMicEnded: () => {
      if (state.call === session) {
        showBanner("mic-lost", "The microphone stopped (unplugged or taken by another app). The call was ended.");
        hangUp();
      }
    },
  });
  try {
    await session.engine.start();
  } catch (err) {
    const message = err instanceof AudioError ? err.message : `Audio could not start: ${err.message}`;
    finishCall(session, "failed", message, err instanceof AudioError ? err.kind : "audio");
    return;
  }
  if (state.call !== session) return;
  setCallState("connecting", `Calling ${session.agentName}…`);
  session.socket = new CallSocket({
    onStarted: (msg) => {
      session.callId = msg.call_id;
      session.engine.capture(true);
      setCallState("live", `Live with ${session.agentName}`);
      const id = document.createElement("small");
      id.className = "call-id";
      id.textContent = msg.call_id;
      ui.callStatus.append(document.createElement("br"), id);
      note(`Call started · ${msg.sample_rate / 1000} kHz ${msg.encoding}`);
    },
    onAudio: (pcm) => onAgentAudio(session, pcm),
    onMessage: (msg) => onMessage(session, msg),
    onClosed: (info) => onSocketClosed(session, info),
  });
  session.socket.connect({
    url: state.config.wsUrl || "/v1/stream",
    token: state.api.key,
    agentId: state.agent.id,
    sampleRate: session.engine.sampleRate,
  });
}

function onAgentAudio(session, pcm) {
  const now = performance.now();
  let tag = null;
  if (session.afterClear || now - session.lastAudioAt > SEGMENT_GAP_MS) {
    tag = session.nextTag++;
    session.pieces.set(tag, { receivedAt: now, playedAt: null, turn: null });
    session.lastTag = tag;
    session.afterClear = false;
  }
  session.lastAudioAt = now;
  session.engine.play(pcm, tag);
}

function piecePlayed(session, tag, playedAt) {
  const piece = session.pieces.get(tag);
  if (!piece) return;
  piece.playedAt = playedAt;
  if (piece.turn !== null) updatePlayed(session, piece.turn);
}

/** first_audio_played = the worker's first_audio_out + the page's receive→speaker delay. */
function updatePlayed(session, turnId) {
  const tag = session.turnPiece.get(turnId);
  const piece = tag && session.pieces.get(tag);
  const marks = board.turns.get(turnId);
  if (!piece || piece.playedAt === null || !marks || typeof marks.first_audio_out !== "number") return;
  const delay = Math.max(0, piece.playedAt - piece.receivedAt) / 1000;
  board.setPlayed(turnId, marks.first_audio_out + delay);
}

function onMessage(session, msg) {
  switch (msg.type) {
    case "clear":
      session.engine.clear();
      session.afterClear = true;
      document.body.dataset.clears = String(Number(document.body.dataset.clears || 0) + 1);
      if (view.playingTurn !== null) agentBubble(view.playingTurn).el.classList.add("cut");
      break;
    case "mark":
      session.engine.mark(msg.name);
      break;
    case "live":
      onLive(msg.live);
      break;
    case "transcript":
      if (msg.segment.role === "user") userCommitted(msg.segment);
      else agentCommitted(msg.segment);
      break;
    case "event":
      onEvent(session, msg.event);
      break;
    case "error":
      // before "started" the call is refused: the banner explains it when the socket closes
      if (session.callId) note(`The worker reported an error: ${msg.error} (${msg.code})`, "warn");
      break;
    case "ended":
      break; // handled when the socket closes
  }
}

function onLive(live) {
  switch (live.type) {
    case "user.partial":
      userPartial(live.text);
      break;
    case "user.final":
      userFinal(live.text);
      break;
    case "agent.text":
      agentText(live.turn_id, live.text);
      break;
  }
}

function onEvent(session, event) {
  const data = event.data || {};
  switch (event.type) {
    case "agent.speech_started": {
      view.playingTurn = data.turn_id;
      agentBubble(data.turn_id).el.classList.add("speaking");
      const tag = session.lastTag;
      const piece = tag && session.pieces.get(tag);
      if (piece && piece.turn === null) {
        piece.turn = data.turn_id;
        session.turnPiece.set(data.turn_id, tag);
        updatePlayed(session, data.turn_id);
      }
      break;
    }
    case "agent.speech_stopped":
      agentBubble(data.turn_id).el.classList.remove("speaking", "paused");
      if (view.playingTurn === data.turn_id) view.playingTurn = null;
      break;
    case "agent.paused":
      agentBubble(data.turn_id).el.classList.add("paused");
      break;
    case "agent.resumed":
      agentBubble(data.turn_id).el.classList.remove("paused", "cut");
      break;
    case "agent.interrupted":
      markInterrupted(data.turn_id, data.played_s);
      break;
    case "turn.metrics":
      board.setMarks(data.turn_id, data.marks || {});
      updatePlayed(session, data.turn_id);
      document.body.dataset.turnsMeasured = String(board.userTurns().length);
      break;
    case "call.status":
      if (data.status === "failed") session.failedStatus = data.reason || "failed";
      break;
    case "provider.error":
      note(`${data.provider || "a provider"} failed: ${data.error || data.status}`, "warn");
      break;
    case "provider.failover":
      note(`${data.kind}: ${data.from} failed, ${data.to} took over`, "warn");
      break;
    case "tool.call":
      note(`tool call: ${data.name}`);
      break;
    case "call.error":
      note(`internal error in ${data.where}: ${data.error}`, "error");
      break;
  }
}

/** A level meter on a rough dB scale: -60 dBFS is empty, 0 dBFS full. */
function setLevel(el, rms) {
  const db = rms > 0 ? 20 * Math.log10(rms) : -60;
  el.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
}

function showStats(session, stats) {
  session.framesPlayed = stats.framesPlayed;
  setLevel(ui.micMeter, stats.micRms);
  setLevel(ui.outMeter, stats.outputRms);
  const body = document.body.dataset;
  body.framesPlayed = String(stats.framesPlayed);
  body.framesSent = String(session.socket ? session.socket.framesSent : 0);
  body.outputPeak = stats.outputPeak.toFixed(4);
  body.underruns = String(stats.underruns);
}

async function onSocketClosed(session, info) {
  if (info.kind === "ended") {
    const reason = info.reason || "ended";
    if (session.failedStatus || !isNormalEnding(reason)) {
      const detail = info.error ? ` — ${info.error.error}` : "";
      finishCall(session, "failed", `The call failed: ${session.failedStatus || reason}${detail}`, "call-failed");
    } else {
      finishCall(session, "ended", `Call ended (${reason.replaceAll("_", " ")}).`);
    }
    return;
  }
  if (info.kind === "dropped") {
    finishCall(
      session,
      "dropped",
      `The connection to the worker dropped (WebSocket code ${info.code}); the call is over.`,
      "dropped",
    );
    return;
  }
  // closed before the call started: find out why
  let up = false;
  try {
    up = await health();
  } catch {
    up = false;
  }
  setWorkerUp(up);
  if (!up) {
    finishCall(session, "failed", `Cannot reach the worker at ${location.origin}. Is \`rymi-worker dev\` running?`, "unreachable");
    return;
  }
  let why = "the worker closed the connection before the call started";
  try {
    await state.api.agents();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) why = "the worker refused the API key";
  }
  finishCall(session, "failed", `The call could not start: ${why}.`, "call-failed");
}

function finishCall(session, outcome, message, bannerKind = null) {
  if (state.call !== session) return;
  state.call = null;
  session.engine?.stop();
  setLevel(ui.micMeter, 0);
  setLevel(ui.outMeter, 0);
  view.playingTurn = null;
  for (const b of view.agent.values()) b.el.classList.remove("speaking", "paused");
  if (view.pendingUser && !view.pendingUser.el.classList.contains("final")) {
    view.pendingUser.el.classList.add("unanswered");
  }
  document.body.dataset.callOutcome = outcome;
  if (outcome === "ended") {
    setCallState("idle", message);
    note(message);
    return;
  }
  setCallState("idle", outcome === "dropped" ? "Connection lost." : "Not connected.");
  if (session.callId) note(message, "error"); // in the transcript, where the call broke
  if (bannerKind === "dropped") {
    showBanner("dropped", message, { action: "Reconnect", onAction: () => startCall() });
  } else if (bannerKind === "unreachable") {
    unreachableBanner();
  } else if (bannerKind === "mic-denied" || bannerKind === "mic-missing" || bannerKind === "mic-busy") {
    showBanner(bannerKind, message, { action: "Try again", onAction: () => startCall() });
  } else {
    showBanner(bannerKind || "call-failed", message, { action: "Try again", onAction: () => startCall() });
  }
}

function hangUp() {
  const session = state.call;
  if (!session) return;
  session.hangingUp = true;
  setCallState("ending");
  if (session.socket) session.socket.hangUp();
  else finishCall(session, "ended", "Call cancelled.");
}

ui.callButton.addEventListener("click", () => {
  if (state.call) hangUp();
  else startCall();
});

window.addEventListener("pagehide", () => state.call?.socket?.hangUp());

setCallState("idle");
boot().then(() => healthLoop());
