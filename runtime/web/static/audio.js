// Microphone in, agent voice out: one AudioContext, one AudioWorklet (worklet.js).
//
// The context runs at 16 kHz when the browser allows it, so 20 ms frames of PCM16 go on
// the wire with no resampling in JavaScript (the browser resamples the microphone and the
// output with its own high-quality resamplers). Echo cancellation, noise suppression and
// automatic gain control are asked for, so the agent's voice from laptop speakers does not
// come back as a barge-in.

const WIRE_RATE = 16000;
const MIC_CONSTRAINTS = {
  audio: {
    echoCancellation: true,
    noiseSuppression: true,
    autoGainControl: true,
    channelCount: 1,
  },
};

/** A failure the page explains to the user; `kind` picks the message. */
export class AudioError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

function micError(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return new AudioError(
      "mic-denied",
      "Microphone access was denied. Allow the microphone for this page (the icon in the " +
        "address bar) and press Start again.",
    );
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return new AudioError("mic-missing", "No microphone was found. Plug one in and try again.");
  }
  if (name === "NotReadableError") {
    return new AudioError(
      "mic-busy",
      "The microphone is in use by another application or could not be opened.",
    );
  }
  return new AudioError("mic-failed", `The microphone could not be opened: ${err && err.message}`);
}

export class AudioEngine {
  /**
   * @param {object} handlers  onMicFrame(ArrayBuffer), onStarted(id, performanceTimeMs),
   *                           onMark(name), onStats(stats), onCleared(info), onMicEnded()
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.ctx = null;
    this.node = null;
    this.stream = null;
    this.analyser = null;
    this.outputPeak = 0;
    this.sampleRate = WIRE_RATE;
  }

  /** Ask for the microphone and build the graph. Must start inside a click handler. */
  async start() {
    if (!window.isSecureContext || !navigator.mediaDevices) {
      throw new AudioError(
        "insecure",
        "The browser only gives the microphone to secure pages: open the playground at " +
          "http://localhost:<port>/ or http://127.0.0.1:<port>/ (or serve it over https).",
      );
    }
    if (typeof AudioWorkletNode === "undefined") {
      throw new AudioError("unsupported", "This browser has no AudioWorklet; use a current Chrome, Edge, Firefox or Safari.");
    }
    // the context is created before any await, while the click still counts as a gesture
    let ctx = new AudioContext({ sampleRate: WIRE_RATE, latencyHint: "interactive" });
    try {
      this.stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    } catch (err) {
      ctx.close();
      throw micError(err);
    }
    let source;
    try {
      source = ctx.createMediaStreamSource(this.stream);
    } catch (err) {
      // some browsers cannot resample a microphone into a 16 kHz context: use the
      // device rate on the wire instead (the worker resamples; any 8-48 kHz is accepted)
      ctx.close();
      ctx = new AudioContext({ latencyHint: "interactive" });
      if (ctx.sampleRate > 48000) {
        ctx.close();
        this.stopMic();
        throw new AudioError("unsupported", `The audio device runs at ${ctx.sampleRate} Hz; the worker accepts up to 48 kHz.`);
      }
      source = ctx.createMediaStreamSource(this.stream);
    }
    this.ctx = ctx;
    this.sampleRate = ctx.sampleRate;
    await ctx.audioWorklet.addModule(new URL("./worklet.js", import.meta.url));
    this.node = new AudioWorkletNode(ctx, "rymi-io", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
    });
    this.node.port.onmessage = (event) => this.onWorklet(event.data);
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 1024;
    source.connect(this.node); // the microphone only feeds the worklet, never the speakers
    this.node.connect(this.analyser);
    this.analyser.connect(ctx.destination);
    for (const track of this.stream.getAudioTracks()) {
      track.addEventListener("ended", () => this.handlers.onMicEnded?.());
    }
    if (ctx.state !== "running") await ctx.resume();
    this.scratch = new Float32Array(this.analyser.fftSize);
  }

  /** Frames to the worklet start/stop flowing to onMicFrame. */
  capture(on) {
    this.node?.port.postMessage({ type: "capture", on });
  }

  play(pcm, id = null) {
    this.node?.port.postMessage({ type: "audio", pcm, id }, [pcm]);
  }

  mark(name) {
    this.node?.port.postMessage({ type: "mark", name });
  }

  clear() {
    this.node?.port.postMessage({ type: "clear" });
  }

  /** The performance.now() time at which a sample at context time `t` leaves the speakers. */
  toPerformanceTime(t) {
    const stamp = this.ctx.getOutputTimestamp?.();
    if (stamp && stamp.performanceTime) {
      return stamp.performanceTime + (t - stamp.contextTime) * 1000;
    }
    const latency = (this.ctx.outputLatency || this.ctx.baseLatency || 0) * 1000;
    return performance.now() + (t - this.ctx.currentTime) * 1000 + latency;
  }

  /** RMS of what actually reaches the destination, measured after the worklet. */
  outputLevel() {
    if (!this.analyser) return 0;
    this.analyser.getFloatTimeDomainData(this.scratch);
    let sum = 0;
    for (const s of this.scratch) sum += s * s;
    const rms = Math.sqrt(sum / this.scratch.length);
    this.outputPeak = Math.max(this.outputPeak, rms);
    return rms;
  }

  onWorklet(msg) {
    if (!this.ctx) return; // stopped: late messages from the audio thread are dropped
    const h = this.handlers;
    switch (msg.type) {
      case "mic":
        h.onMicFrame?.(msg.pcm);
        break;
      case "started":
        h.onStarted?.(msg.id, this.toPerformanceTime(msg.time));
        break;
      case "mark":
        h.onMark?.(msg.name);
        break;
      case "cleared":
        h.onCleared?.(msg);
        break;
      case "stats":
        h.onStats?.({ ...msg, outputRms: this.outputLevel(), outputPeak: this.outputPeak });
        break;
    }
  }

  stopMic() {
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.stream = null;
  }

  async stop() {
    this.capture(false);
    this.stopMic();
    const ctx = this.ctx;
    if (this.node) this.node.port.onmessage = null;
    this.ctx = this.node = this.analyser = null;
    if (ctx && ctx.state !== "closed") await ctx.close();
  }
}
