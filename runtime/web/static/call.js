// One call over the worker's local stream socket (docs/local-stream.md).
//
// Text frames are JSON control messages, binary frames raw PCM16. The socket tells the
// page how the call ended: "ended" from the worker (normal or failed, with the reason),
// a close before the call started (worker unreachable or key refused), or a close after
// it started without "ended" (the connection dropped).

const NORMAL_ENDINGS = new Set([
  "caller_hangup",
  "agent_hangup",
  "max_duration",
  "silence_timeout",
  "completed",
]);
const MAX_SOCKET_BACKLOG = 256 * 1024; // bytes; beyond it the link is stalled: drop mic frames

export function isNormalEnding(reason) {
  return NORMAL_ENDINGS.has(reason);
}

export class CallSocket {
  /**
   * @param {object} h  onStarted(msg), onAudio(ArrayBuffer), onMessage(msg),
   *                    onClosed({kind: "ended"|"refused"|"dropped", reason, code})
   */
  constructor(h) {
    this.h = h;
    this.ws = null;
    this.started = false;
    this.opened = false;
    this.endedReason = null;
    this.lastError = null;
    this.framesSent = 0;
    this.framesDropped = 0;
    this.closedReported = false;
  }

  connect({ url, token, agentId, sampleRate }) {
    const u = new URL(url, location.href);
    u.protocol = u.protocol === "https:" || u.protocol === "wss:" ? "wss:" : "ws:";
    u.searchParams.set("agent_id", agentId);
    if (token) u.searchParams.set("token", token);
    const ws = new WebSocket(u);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.opened = true;
      ws.send(
        JSON.stringify({
          type: "start",
          agent_id: agentId,
          sample_rate: sampleRate,
          encoding: "pcm16",
          metadata: { source: "playground", user_agent: navigator.userAgent.slice(0, 200) },
        }),
      );
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") {
        this.h.onAudio(event.data);
        return;
      }
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      if (msg.type === "started") {
        this.started = true;
        this.h.onStarted(msg);
      } else if (msg.type === "ended") {
        this.endedReason = msg.reason;
      } else if (msg.type === "error") {
        this.lastError = msg;
      }
      this.h.onMessage(msg);
    };
    ws.onclose = (event) => this.reportClosed(event.code);
  }

  reportClosed(code) {
    if (this.closedReported) return;
    this.closedReported = true;
    let kind = "dropped";
    if (this.endedReason !== null) kind = "ended";
    else if (!this.started) kind = "refused";
    this.h.onClosed({
      kind,
      reason: this.endedReason,
      error: this.lastError,
      code,
      opened: this.opened,
    });
  }

  sendAudio(pcm) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !this.started) return;
    if (ws.bufferedAmount > MAX_SOCKET_BACKLOG) {
      this.framesDropped++;
      return;
    }
    ws.send(pcm);
    this.framesSent++;
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  /** Hang up: the worker answers with "ended" and closes; force it if it does not. */
  hangUp() {
    const ws = this.ws;
    if (!ws) return;
    if (ws.readyState === WebSocket.OPEN) {
      this.send({ type: "end" });
      setTimeout(() => ws.readyState !== WebSocket.CLOSED && ws.close(1000), 2000);
    } else if (ws.readyState === WebSocket.CONNECTING) {
      ws.close();
    }
  }
}
