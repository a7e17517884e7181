"""The pocketsphinx decoding process: many recognition streams, a few shared decoders.

Why a child process and not a thread: pocketsphinx's Python binding holds the GIL for
the whole of every C call (measured: a spinning Python thread makes almost no progress
while ``process_raw`` runs, and ``end_utt`` with the second ``fwdflat`` pass holds it
for ~100-170 ms). In a thread of the worker that would stall every call's 20 ms playout
on the event loop; in this process it runs on the machine's other core instead.

The parent (``pocketsphinx_stt.py``) starts this file as a script, so it imports only
the standard library at module level; pocketsphinx is imported in :func:`main`.

Wire format, both directions: ``Connection.send_bytes`` frames whose first
``HEADER.size`` bytes are ``(op, stream_id)`` and the rest is the payload (raw pcm16
for ``AUDIO``, UTF-8 text for results and errors, JSON for ``READY``).

Decoders are pooled: a stream holds one only between the first audio of an utterance
and ``finalize()``, so the pool grows to the number of people talking at the same
moment, not the number of calls. Creating a decoder loads the model (~0.3 s, ~90 MB)
and holds up every stream of this process meanwhile, so a worker that expects N
simultaneous talkers should grow the pool up front (``OP_GROW``, ``prewarm``). Each
stream keeps its own cepstral mean (``get_cmn`` / ``set_cmn``), so sharing a decoder
never mixes one caller's channel into another's.

Cepstral mean: recognition depends heavily on it (measured on espeak-ng speech, the
model's built-in initial mean turns "where can i find the address" into "you can occupy
new answer you"; the utterance's own mean gets it right). A new stream therefore starts
from the mean of the last utterance this process decoded (callers of one deployment
share a channel). The very first utterance of the process has nothing better than the
built-in value: once ``RESTART_AFTER_S`` of it has arrived, the decoder estimates the mean
from that audio, restarts the utterance with it and decodes the audio so far again (~0.1 s,
while the caller is still talking); an utterance that ends sooner is decoded a second time
with its own mean at ``finalize()``. Replaying the whole utterance at ``finalize()`` instead
delayed the first answer of every new worker by 0.4-0.8 s, for the same recognition
(measured on 30 espeak-ng sentences: 118 word errors with the full replay, 110-119 with a
restart after 0.5-1.2 s, 141 without either). The restart comes at exactly
``RESTART_AFTER_S`` of audio however the parent cut it into messages, so the words never
depend on the chunking.

Dither: callers' streams carry digital silence (runs of exact zeros: a client's padding,
μ-law silence, a muted microphone), on which pocketsphinx's features and cepstral mean go
wrong: the same words after 80 ms of zeros instead of 40 ms came out as "what oh oh". So
every utterance gets a fixed half-bit noise pattern added, restarted with the utterance
(pocketsphinx's own ``dither`` keeps one random state across utterances and decoders, so
the words would depend on what else the process decoded). ``python -m
benchmarks.offline_accuracy`` measures it: word error rate 61.8 % / 51.1 % (first
utterance / later ones) with it, 66.3 % / 55.6 % without; the option ``dither: false``
turns it off.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

HEADER = struct.Struct("<BI")

# parent -> host
OP_OPEN = 1
OP_AUDIO = 2
OP_FINALIZE = 3
OP_CLOSE = 4
OP_GROW = 5  # payload: uint32, the pool size wanted
# host -> parent
OP_READY = 10
OP_PARTIAL = 11
OP_FINAL = 12
OP_ERROR = 13
OP_GROWN = 14  # payload: uint32, decoders in the pool now
COUNT = struct.Struct("<I")

SAMPLE_RATE = 16000
#: the dither pattern's length (samples) and seed; see ``_Host._dither`` and the module doc
DITHER_PERIOD = SAMPLE_RATE * 4
DITHER_SEED = 20261129
#: when the first utterance of the process restarts with a cepstral mean of its own
RESTART_AFTER_S = 0.8


def pack(op: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(op, stream_id) + payload


def unpack(message: bytes) -> tuple[int, int, bytes]:
    op, stream_id = HEADER.unpack_from(message)
    return op, stream_id, message[HEADER.size :]


@dataclass
class _Stream:
    partial_samples: int
    decoder: Any = None
    cmn: str | None = None
    since_partial: int = 0
    last_partial: str = ""
    #: samples of the current utterance so far (where it is in the dither pattern)
    position: int = 0
    #: the utterance's audio, kept only while it may be decoded again (see module doc)
    replay: bytearray | None = None


class _Host:
    def __init__(self, config: dict[str, Any], partial_ms: int) -> None:
        import numpy
        import pocketsphinx

        self._np = numpy
        self._pocketsphinx = pocketsphinx
        # +1 on a quarter of the samples, like pocketsphinx's own ``dither`` (whose random
        # state runs on across utterances and decoders; this pattern restarts with each
        # utterance, so the same audio always gets the same words)
        config = dict(config)
        self._dither_on = bool(config.pop("dither", True))
        rng = numpy.random.default_rng(DITHER_SEED)
        self._noise = (rng.integers(0, 4, DITHER_PERIOD) == 0).astype(numpy.int32)
        started = time.perf_counter()
        self._config = pocketsphinx.Config(logfn=os.devnull, **config)
        first = pocketsphinx.Decoder(self._config)
        self.load_s = time.perf_counter() - started
        self._default_cmn: str = first.get_cmn(False)
        self._recent_cmn: str | None = None
        self._idle: list[Any] = [first]
        self.decoders_created = 1
        self._partial_samples = max(1, SAMPLE_RATE * partial_ms // 1000)
        self._restart_bytes = int(SAMPLE_RATE * RESTART_AFTER_S) * 2
        self._streams: dict[int, _Stream] = {}

    def _new_decoder(self) -> Any:
        decoder = self._pocketsphinx.Decoder(self._config)
        self.decoders_created += 1
        return decoder

    def _acquire(self) -> Any:
        return self._idle.pop() if self._idle else self._new_decoder()

    def handle(self, op: int, stream_id: int, payload: bytes) -> bytes | None:
        if op == OP_GROW:
            (wanted,) = COUNT.unpack(payload)
            while self.decoders_created < wanted:
                self._idle.append(self._new_decoder())
            return pack(OP_GROWN, 0, COUNT.pack(self.decoders_created))
        if op == OP_OPEN:
            self._streams[stream_id] = _Stream(self._partial_samples)
            return None
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        if op == OP_AUDIO:
            return self._audio(stream_id, stream, payload)
        if op == OP_FINALIZE:
            return self._finalize(stream_id, stream)
        if op == OP_CLOSE:
            self._release(stream, end=True)
            del self._streams[stream_id]
        return None

    def _audio(self, stream_id: int, stream: _Stream, pcm: bytes) -> bytes | None:
        if stream.decoder is None:
            stream.decoder = self._acquire()
            cmn = stream.cmn or self._recent_cmn
            stream.replay = bytearray() if cmn is None else None
            stream.decoder.set_cmn(cmn or self._default_cmn)
            stream.decoder.start_utt()
            stream.since_partial = 0
            stream.last_partial = ""
            stream.position = 0
        if self._dither_on:
            pcm = self._dither(stream, pcm)
        if stream.replay is not None and len(stream.replay) + len(pcm) >= self._restart_bytes:
            # restart at exactly RESTART_AFTER_S, whatever the chunking: the mean (and so
            # the words) must not depend on how the caller's audio was cut into messages
            head = self._restart_bytes - len(stream.replay)
            stream.decoder.process_raw(pcm[:head], False, False)
            stream.replay += pcm[:head]
            self._restart_with_own_mean(stream)
            if head < len(pcm):
                stream.decoder.process_raw(pcm[head:], False, False)
        else:
            stream.decoder.process_raw(pcm, False, False)
            if stream.replay is not None:
                stream.replay += pcm
        stream.since_partial += len(pcm) // 2
        if stream.since_partial < stream.partial_samples:
            return None
        stream.since_partial = 0
        hyp = stream.decoder.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        if not text or text == stream.last_partial:
            return None
        stream.last_partial = text
        return pack(OP_PARTIAL, stream_id, text.encode())

    def _dither(self, stream: _Stream, pcm: bytes) -> bytes:
        """Add the utterance's fixed half-bit noise pattern (see the module doc)."""
        np = self._np
        samples = np.frombuffer(pcm, dtype="<i2")
        start = stream.position
        stream.position += samples.size
        noise = self._noise.take(np.arange(start, stream.position), mode="wrap")
        return (samples.astype(np.int32) + noise).clip(-32768, 32767).astype("<i2").tobytes()

    def _restart_with_own_mean(self, stream: _Stream) -> None:
        """Decode the utterance so far again, normalised with its own cepstral mean."""
        decoder, audio = stream.decoder, bytes(stream.replay or b"")
        stream.replay = None
        cmn = decoder.get_cmn(True)  # the estimate from this utterance's audio
        decoder.end_utt()
        decoder.set_cmn(cmn)
        decoder.start_utt()
        decoder.process_raw(audio, False, False)

    def _finalize(self, stream_id: int, stream: _Stream) -> bytes:
        text, confidence = "", -1.0
        decoder = stream.decoder
        if decoder is not None:
            decoder.end_utt()
            if stream.replay is not None:
                decoder.set_cmn(decoder.get_cmn(False))
                decoder.start_utt()
                decoder.process_raw(bytes(stream.replay), False, True)
                decoder.end_utt()
                stream.replay = None
            hyp = decoder.hyp()
            if hyp is not None:
                text = hyp.hypstr.strip()
                confidence = float(hyp.prob) if 0.0 <= hyp.prob <= 1.0 else -1.0
            stream.cmn = self._recent_cmn = decoder.get_cmn(False)
            self._release(stream, end=False)
        body = json.dumps({"text": text, "confidence": confidence}).encode()
        return pack(OP_FINAL, stream_id, body)

    def _release(self, stream: _Stream, *, end: bool) -> None:
        decoder, stream.decoder = stream.decoder, None
        stream.replay = None
        if decoder is None:
            return
        if end:
            decoder.end_utt()
        self._idle.append(decoder)


def main(argv: list[str]) -> int:
    from multiprocessing.connection import Connection

    rx = Connection(int(argv[1]), writable=False)
    tx = Connection(int(argv[2]), readable=False)
    settings = json.loads(argv[3])
    try:
        host = _Host(settings.get("config", {}), int(settings.get("partial_ms", 200)))
    except Exception as exc:  # a broken model or config: tell the parent, then stop
        tx.send_bytes(pack(OP_ERROR, 0, f"{type(exc).__name__}: {exc}".encode()))
        return 1
    tx.send_bytes(pack(OP_READY, 0, json.dumps({"load_s": host.load_s}).encode()))
    while True:
        try:
            message = rx.recv_bytes()
        except (EOFError, OSError):
            return 0  # the parent closed the pipe or died
        op, stream_id, payload = unpack(message)
        try:
            reply = host.handle(op, stream_id, payload)
        except Exception as exc:
            reply = pack(OP_ERROR, stream_id, f"{type(exc).__name__}: {exc}".encode())
        if reply is not None:
            tx.send_bytes(reply)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
