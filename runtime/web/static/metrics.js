// The per-turn latency waterfall and its running medians.
//
// The worker reports each reply's marks (event "turn.metrics", seconds since the call
// started, one clock); the page adds "first audio played" from its own playback: the
// worker's first_audio_out plus the time between that frame reaching the page and
// leaving the speakers (both measured on the page's clock, so no clock sync is needed).

export const STAGES = [
  { key: "speech_ended", label: "End of speech" },
  { key: "endpoint", label: "Endpoint" },
  { key: "final_transcript", label: "Final transcript" },
  { key: "llm_first_token", label: "LLM first token" },
  { key: "tts_first_audio", label: "TTS first audio" },
  { key: "first_audio_out", label: "First audio sent" },
  { key: "first_audio_played", label: "First audio played" },
];
const MAX_TURNS_SHOWN = 8;

export function median(values) {
  const v = values.filter((x) => typeof x === "number" && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/**
 * One turn as rows: ms since the end of speech and the step from the previous stage
 * that has a value. Null when the turn has no end of speech (the greeting).
 */
export function timeline(marks) {
  const origin = marks.speech_ended;
  if (typeof origin !== "number") return null;
  let previous = 0;
  return STAGES.map(({ key, label }) => {
    const t = marks[key];
    if (typeof t !== "number") return { key, label, ms: null, deltaMs: null };
    const ms = (t - origin) * 1000;
    const row = { key, label, ms, deltaMs: ms - previous };
    previous = ms;
    return row;
  });
}

export function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return `${Math.round(ms)} ms`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class LatencyBoard {
  constructor(summaryEl, turnsEl) {
    this.summaryEl = summaryEl;
    this.turnsEl = turnsEl;
    this.turns = new Map(); // turn_id -> marks (seconds), including first_audio_played
  }

  reset() {
    this.turns.clear();
    this.render();
  }

  setMarks(turnId, marks) {
    const known = this.turns.get(turnId) || {};
    this.turns.set(turnId, { ...marks, first_audio_played: known.first_audio_played ?? null });
    this.render();
  }

  setPlayed(turnId, seconds) {
    const known = this.turns.get(turnId);
    if (!known) return false;
    known.first_audio_played = seconds;
    this.render();
    return true;
  }

  /** User turns with an end of speech, oldest first. */
  userTurns() {
    return [...this.turns.entries()]
      .map(([id, marks]) => ({ id, rows: timeline(marks) }))
      .filter((t) => t.rows !== null)
      .sort((a, b) => a.id - b.id);
  }

  render() {
    const turns = this.userTurns();
    this.renderSummary(turns);
    this.turnsEl.replaceChildren();
    const shown = turns.slice(-MAX_TURNS_SHOWN).reverse();
    const scale = Math.max(
      400,
      ...shown.flatMap((t) => t.rows.map((r) => (r.ms === null ? 0 : Math.max(r.ms, r.ms - r.deltaMs)))),
    );
    for (const turn of shown) this.turnsEl.append(this.renderTurn(turn, scale));
  }

  renderSummary(turns) {
    const s = this.summaryEl;
    s.replaceChildren();
    const heard = turns.map((t) => t.rows.at(-1).ms);
    const sent = turns.map((t) => t.rows.at(-2).ms);
    const v2v = median(heard) ?? median(sent);
    const big = el("div", "v2v");
    const value = el("strong", v2v === null ? "none" : null, formatMs(v2v));
    value.id = "v2v-median";
    value.dataset.ms = v2v === null ? "" : String(Math.round(v2v));
    big.append(el("span", "v2v-label", "Voice-to-voice, median"), value);
    const count = turns.length;
    big.append(
      el("span", "muted", count ? `over ${count} turn${count === 1 ? "" : "s"}, end of speech → first audio ${median(heard) === null ? "sent" : "heard"}` : "talk to the agent to measure"),
    );
    s.append(big);
    if (!count) return;
    const table = el("table", "medians");
    const head = el("tr");
    head.append(el("th", null, "stage"), el("th", "num", "last"), el("th", "num", "median"));
    table.append(head);
    const last = turns.at(-1);
    STAGES.slice(1).forEach((stage, i) => {
      const row = el("tr");
      const values = turns.map((t) => t.rows[i + 1].ms);
      row.append(
        el("td", null, stage.label),
        el("td", "num", formatMs(last.rows[i + 1].ms)),
        el("td", "num", formatMs(median(values))),
      );
      table.append(row);
    });
    s.append(table);
  }

  renderTurn(turn, scale) {
    const card = el("article", "turn");
    card.dataset.turn = String(turn.id);
    const total = turn.rows.at(-1).ms ?? turn.rows.at(-2).ms;
    const header = el("header");
    header.append(el("span", null, `Turn ${turn.id}`), el("span", "total", formatMs(total)));
    card.append(header);
    const list = el("ol", "waterfall");
    for (const row of turn.rows) {
      const item = el("li");
      item.dataset.stage = row.key;
      item.dataset.ms = row.ms === null ? "" : String(Math.round(row.ms));
      const track = el("span", "track");
      if (row.ms !== null) {
        const from = Math.max(0, Math.min(row.ms, row.ms - row.deltaMs));
        const to = Math.max(row.ms, row.ms - row.deltaMs);
        const bar = el("span", `bar stage-${row.key}`);
        bar.style.left = `${(from / scale) * 100}%`;
        bar.style.width = `${Math.max(0.6, ((to - from) / scale) * 100)}%`;
        track.append(bar);
      }
      const delta = row.deltaMs === null || row.key === "speech_ended" ? "" : `+${Math.round(row.deltaMs)}`;
      item.append(
        el("span", "label", row.label),
        track,
        el("span", "num delta", delta.replace("+-", "−")),
        el("span", "num", row.ms === null ? "–" : formatMs(row.ms)),
      );
      list.append(item);
    }
    card.append(list);
    return card;
  }
}
