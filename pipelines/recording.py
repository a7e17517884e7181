"""Both sides of a call on one stereo timeline: the caller left, the agent right.

Pure bookkeeping, no I/O: the runtime feeds it what the transport received
(:meth:`StereoRecorder.on_input`), every frame the paced playout handed to the transport
(:meth:`on_output`) and every clear (:meth:`on_clear`, a barge-in or a pause), each with
its time in seconds since the call started, and writes what :meth:`drain` returns.

Alignment: each side has a write cursor on a common sample clock. A chunk goes right
after the previous one of its side (audio is continuous within a stream), unless its
timestamp says it starts more than ``join_gap_s`` later: then the gap is filled with
silence. So the caller's stream stays gap-free under network jitter, and each agent reply
starts where it was actually played. A clear cuts the agent side back to the clear's
time: frames the playout sent ahead of real time and the transport then dropped were never
heard, so they are not in the recording either. Audio older than ``horizon_s`` is final
(no clear can reach it) and is handed out by :meth:`drain`.
"""

from __future__ import annotations

import numpy as np

from pipelines.audio import AudioConverter
from providers.base import AudioFormat

#: Recording rates: 8 kHz when both sides are narrowband telephony, else 16 kHz.
NARROWBAND = 8000
WIDEBAND = 16000


def recording_format(input_format: AudioFormat, output_format: AudioFormat) -> AudioFormat:
    """pcm16 at 8 kHz if neither side has more, else 16 kHz (enough for speech)."""
    top = max(input_format.sample_rate, output_format.sample_rate)
    return AudioFormat("pcm16", NARROWBAND if top <= NARROWBAND else WIDEBAND)


class _Track:
    """One side: samples from ``base`` (the first sample not yet drained) to ``cursor``."""

    def __init__(self) -> None:
        self.data = bytearray()  # pcm16 samples [base, cursor)
        self.base = 0

    @property
    def cursor(self) -> int:
        return self.base + len(self.data) // 2

    def place(self, pcm: bytes, start: int, join: int) -> None:
        if start > self.cursor + join:
            self.data.extend(b"\0\0" * (start - self.cursor))
        self.data.extend(pcm)

    def truncate(self, position: int) -> None:
        keep = max(0, position - self.base)
        if keep * 2 < len(self.data):
            del self.data[keep * 2 :]

    def take(self, upto: int) -> np.ndarray:
        """Samples [base, upto), silence where the side had nothing; advances ``base``."""
        count = upto - self.base
        out = np.zeros(count, dtype=np.int16)
        have = min(count, len(self.data) // 2)
        if have > 0:
            out[:have] = np.frombuffer(bytes(self.data[: have * 2]), dtype="<i2")
            del self.data[: have * 2]
        self.base = upto
        return out


class StereoRecorder:
    """``StereoRecorder(input_format, output_format)``: feed it, drain it, finish it.

    ``format`` is the per-channel format of the result (pcm16, 8 or 16 kHz); the bytes
    returned are interleaved stereo frames (left = caller, right = agent).
    """

    def __init__(
        self,
        input_format: AudioFormat,
        output_format: AudioFormat,
        *,
        sample_rate: int | None = None,
        join_gap_s: float = 0.1,
        horizon_s: float = 0.5,
    ) -> None:
        fmt = recording_format(input_format, output_format)
        self.format = AudioFormat("pcm16", sample_rate) if sample_rate else fmt
        self.input_format = input_format
        self.output_format = output_format
        self._rate = self.format.sample_rate
        self._join = round(join_gap_s * self._rate)
        self._horizon = horizon_s
        self._user = _Track()
        self._agent = _Track()
        self._user_conv = self._converter(input_format)
        self._agent_conv = self._converter(output_format)
        self.samples = 0  #: stereo sample frames handed out so far
        self.agent_samples_cut = 0  #: agent samples removed by clears (sent, never heard)

    def _converter(self, fmt: AudioFormat) -> AudioConverter:
        # the low-latency resampler: a constant ~20 ms delay instead of bursts
        return AudioConverter(fmt, self.format, low_latency=True)

    def _position(self, t: float) -> int:
        return max(0, round(t * self._rate))

    @property
    def duration_s(self) -> float:
        return self.samples / self._rate

    def on_input(self, data: bytes, t: float) -> None:
        """Caller audio (``input_format``, any size) received at ``t`` (its end)."""
        pcm = self._user_conv.process(data)
        if pcm:
            start = self._position(t) - len(pcm) // 2
            self._user.place(pcm, start, self._join)

    def on_output(self, frame: bytes, t: float) -> None:
        """An agent frame (``output_format``) handed to the transport at ``t``: it starts
        playing then, or right after the frames sent before it."""
        pcm = self._agent_conv.process(frame)
        if pcm:
            self._agent.place(pcm, self._position(t), self._join)

    def on_clear(self, t: float) -> None:
        """The transport dropped what it still buffered at ``t``: cut the agent side."""
        cut = max(self._position(t), self._agent.base)
        before = self._agent.cursor
        self._agent.truncate(cut)
        self.agent_samples_cut += max(0, before - self._agent.cursor)
        self._agent_conv = self._converter(self.output_format)  # drop its buffered tail

    def drain(self, t: float) -> bytes:
        """Interleaved stereo that no later input can change (older than the horizon)."""
        return self._emit(self._position(t - self._horizon))

    def finish(self) -> bytes:
        """The rest, up to the end of the longer side. Call once, at the end."""
        for conv, track in ((self._user_conv, self._user), (self._agent_conv, self._agent)):
            tail = conv.flush()
            if tail:
                track.data.extend(tail)
        return self._emit(max(self._user.cursor, self._agent.cursor))

    def _emit(self, upto: int) -> bytes:
        base = self._user.base
        if upto <= base:
            return b""
        left = self._user.take(upto)
        right = self._agent.take(upto)
        stereo = np.empty(left.size * 2, dtype="<i2")
        stereo[0::2] = left
        stereo[1::2] = right
        self.samples += left.size
        return stereo.tobytes()
