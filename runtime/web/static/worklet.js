// The audio thread of the playground: one processor for both directions.
//
// input 0  : the microphone -> 20 ms PCM16 frames posted to the page (which sends them)
// output 0 : the agent's voice, from a small jitter buffer of PCM16 frames
//
// The AudioContext runs at the wire rate (16 kHz when the browser allows it), so no
// resampling happens here. Messages from the page:
//   {type: "audio", pcm: ArrayBuffer, id: number|null}  a frame; id tags the first frame
//                                                     of a piece of speech (reported back
//                                                     with its exact playback time)
//   {type: "mark", name}   report when everything queued before it has played
//   {type: "clear"}        barge-in: drop everything queued, now
//   {type: "capture", on}  start/stop sending microphone frames
// Messages to the page: "mic" (a frame), "started", "mark", "cleared", "stats".

const PREBUFFER_FRAMES = 2; // 40 ms: absorbs socket jitter, costs 40 ms of latency
const MAX_WAIT_S = 0.06; // start anyway if the buffer has not filled in this time
const MAX_BUFFER_S = 1.0; // the worker paces in real time; beyond this we drop the oldest
const STATS_EVERY_S = 0.05;

class RymiIO extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frameSamples = Math.round(sampleRate / 50);
    this.capture = false;
    this.mic = new Int16Array(this.frameSamples);
    this.micPos = 0;
    this.micSum = 0;
    this.micCount = 0;

    this.queue = []; // {pcm: Float32Array, pos: number, id: number|null} or {mark: string}
    this.buffered = 0; // samples in the queue
    this.playing = false;
    this.waitStart = -1;
    this.samplesPlayed = 0;
    this.underruns = 0; // ran dry in the middle of a piece of speech
    this.dryAt = -1;
    this.markSinceDry = false;
    this.dropped = 0;
    this.outSum = 0;
    this.outCount = 0;
    this.nextStats = 0;

    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    switch (msg.type) {
      case "audio": {
        if (!this.playing && this.dryAt >= 0 && !this.markSinceDry && currentTime - this.dryAt < 0.25) {
          this.underruns++;
        }
        this.dryAt = -1;
        this.markSinceDry = false;
        const ints = new Int16Array(msg.pcm);
        const pcm = new Float32Array(ints.length);
        for (let i = 0; i < ints.length; i++) pcm[i] = ints[i] / 32768;
        this.queue.push({ pcm, pos: 0, id: msg.id ?? null });
        this.buffered += pcm.length;
        this.trim();
        break;
      }
      case "mark":
        this.queue.push({ mark: msg.name });
        break;
      case "clear": {
        const dropped = this.buffered;
        this.queue = [];
        this.buffered = 0;
        this.playing = false;
        this.waitStart = -1;
        this.port.postMessage({ type: "cleared", droppedMs: (dropped / sampleRate) * 1000 });
        break;
      }
      case "capture":
        this.capture = Boolean(msg.on);
        this.micPos = 0;
        break;
    }
  }

  emitMark(name) {
    this.markSinceDry = true;
    this.port.postMessage({ type: "mark", name });
  }

  trim() {
    const limit = MAX_BUFFER_S * sampleRate;
    while (this.buffered > limit && this.queue.length) {
      const head = this.queue[0];
      if (head.mark !== undefined) {
        this.emitMark(head.mark);
      } else {
        const left = head.pcm.length - head.pos;
        this.buffered -= left;
        this.dropped += left;
      }
      this.queue.shift();
    }
  }

  readyToPlay() {
    if (this.playing) return true;
    if (!this.queue.length) return false;
    if (this.buffered >= PREBUFFER_FRAMES * this.frameSamples) return true;
    if (this.queue.some((item) => item.mark !== undefined)) return true; // end of a piece
    if (this.waitStart < 0) this.waitStart = currentTime;
    return currentTime - this.waitStart >= MAX_WAIT_S;
  }

  render(out) {
    let i = 0;
    if (this.readyToPlay()) {
      this.playing = true;
      this.waitStart = -1;
      while (i < out.length && this.queue.length) {
        const head = this.queue[0];
        if (head.mark !== undefined) {
          this.emitMark(this.queue.shift().mark);
          continue;
        }
        if (head.pos === 0 && head.id !== null) {
          this.port.postMessage({ type: "started", id: head.id, time: currentTime + i / sampleRate });
        }
        const n = Math.min(out.length - i, head.pcm.length - head.pos);
        for (let k = 0; k < n; k++) {
          const s = head.pcm[head.pos + k];
          out[i + k] = s;
          this.outSum += s * s;
        }
        i += n;
        head.pos += n;
        this.buffered -= n;
        this.samplesPlayed += n;
        if (head.pos >= head.pcm.length) this.queue.shift();
      }
      // marks right behind the last sample are reported without waiting for more audio
      while (this.queue.length && this.queue[0].mark !== undefined) {
        this.emitMark(this.queue.shift().mark);
      }
      if (!this.queue.length) {
        this.playing = false;
        this.dryAt = currentTime;
      }
    }
    for (; i < out.length; i++) out[i] = 0;
    this.outCount += out.length;
  }

  record(input) {
    for (let i = 0; i < input.length; i++) {
      const s = Math.max(-1, Math.min(1, input[i]));
      this.micSum += s * s;
      this.mic[this.micPos++] = s < 0 ? s * 32768 : s * 32767;
      if (this.micPos === this.frameSamples) {
        const frame = this.mic;
        this.port.postMessage({ type: "mic", pcm: frame.buffer }, [frame.buffer]);
        this.mic = new Int16Array(this.frameSamples);
        this.micPos = 0;
      }
    }
    this.micCount += input.length;
  }

  process(inputs, outputs) {
    const input = inputs[0] && inputs[0][0];
    if (this.capture && input) this.record(input);
    const out = outputs[0][0];
    this.render(out);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);

    if (currentTime >= this.nextStats) {
      this.nextStats = currentTime + STATS_EVERY_S;
      this.port.postMessage({
        type: "stats",
        framesPlayed: Math.floor(this.samplesPlayed / this.frameSamples),
        bufferedMs: (this.buffered / sampleRate) * 1000,
        underruns: this.underruns,
        droppedMs: (this.dropped / sampleRate) * 1000,
        micRms: this.micCount ? Math.sqrt(this.micSum / this.micCount) : 0,
        outRms: this.outCount ? Math.sqrt(this.outSum / this.outCount) : 0,
      });
      this.micSum = this.micCount = this.outSum = this.outCount = 0;
    }
    return true;
  }
}

registerProcessor("rymi-io", RymiIO);
