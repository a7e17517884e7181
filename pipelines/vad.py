"""Voice activity segmentation: per-frame webrtcvad decisions → speech start/end events.

webrtcvad scores each 10/20/30 ms frame; single frames are noisy, so this module turns the
frame flags into utterances: speech starts once voiced frames add up to ``min_speech_ms``
(short unvoiced gaps tolerated) and ends after ``min_silence_ms`` of continuous non-speech.

Event times are the real boundaries in the audio, not the moment of decision: a start is
stamped with the start of the first voiced frame of the run, an end with the end of the
last voiced frame. Two quirks of webrtcvad (see ``vad_core.c``) are corrected for:

- Hangover: after its raw decision turns to "no speech" it keeps answering "speech" for
  ``max1`` more frames after short speech or ``max2`` after 7+ frames of it. Those frames
  are removed when the end is placed (``_END_HANGOVER``), so ends are not late by 60-140 ms
  and ``min_silence_ms`` counts real silence. When counting towards a start, the part that
  is certain (``max1``) is not counted as speech once the burst is over.
- Warm-up: its noise model starts from generic values and calls the first ~100 ms of any
  background noise speech. Voiced frames in the first ``warmup_ms`` of signal (digital
  silence does not count) are not counted towards a start; a run that begins there and
  goes on still starts at its true time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import webrtcvad

from pipelines.agent_config import VadSettings

__all__ = ["VAD_FRAME_MS", "VAD_SAMPLE_RATES", "VadEvent", "VadSegmenter"]

VAD_SAMPLE_RATES = (8000, 16000, 32000, 48000)
VAD_FRAME_MS = (10, 20, 30)

# webrtcvad's hangover in frames (kOverHangMax1*/kOverHangMax2* in vad_core.c) by mode,
# for 10/20/30 ms frames.
_HANGOVER_MAX1: dict[int, dict[int, int]] = {
    0: {10: 8, 20: 4, 30: 3},
    1: {10: 8, 20: 4, 30: 3},
    2: {10: 6, 20: 3, 30: 2},
    3: {10: 6, 20: 3, 30: 2},
}
_HANGOVER_MAX2: dict[int, dict[int, int]] = {
    0: {10: 14, 20: 7, 30: 5},
    1: {10: 14, 20: 7, 30: 5},
    2: {10: 9, 20: 5, 30: 3},
    3: {10: 9, 20: 5, 30: 3},
}
# What to remove from the end of speech. In modes 0-1 speech ends with a long steady run
# of raw "speech" frames, so the hangover is max2; in modes 2-3 the last frames flicker,
# the final run is short and the hangover max1 (measured on espeak-ng speech: ends land
# within -50..+80 ms of the signal's end in every mode).
_END_HANGOVER: dict[int, dict[int, int]] = {
    0: _HANGOVER_MAX2[0],
    1: _HANGOVER_MAX2[1],
    2: _HANGOVER_MAX1[2],
    3: _HANGOVER_MAX1[3],
}


@dataclass(frozen=True, slots=True)
class VadEvent:
    """``t``: the real boundary (seconds, the caller's clock); ``decided_at``: the end of
    the frame that made the decision, i.e. the earliest moment the event could be known."""

    kind: Literal["speech_started", "speech_ended"]
    t: float
    decided_at: float


class VadSegmenter:
    """Segments a stream of PCM16 frames into speech runs. Pure: no clock, no I/O.

    ``process(frame, t)`` takes one frame of ``frame_ms`` milliseconds at ``sample_rate``
    whose first sample is at time ``t`` (seconds) and returns the events it caused.
    ``max_gap_ms`` is how much consecutive non-speech a starting run may contain before it
    is dropped (isolated unvoiced frames inside a word are normal).
    """

    def __init__(
        self,
        *,
        sample_rate: int,
        aggressiveness: int = 2,
        min_speech_ms: int = 100,
        min_silence_ms: int = 300,
        frame_ms: int = 20,
        max_gap_ms: int = 60,
        warmup_ms: int = 160,
    ) -> None:
        if sample_rate not in VAD_SAMPLE_RATES:
            raise ValueError(
                f"VAD sample rate must be one of {', '.join(map(str, VAD_SAMPLE_RATES))} Hz, "
                f"got {sample_rate}"
            )
        if frame_ms not in VAD_FRAME_MS:
            raise ValueError(f"VAD frame duration must be 10, 20 or 30 ms, got {frame_ms}")
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness must be 0-3, got {aggressiveness}")
        if min_speech_ms <= 0 or min_silence_ms <= 0 or max_gap_ms < 0 or warmup_ms < 0:
            raise ValueError(
                "min_speech_ms and min_silence_ms must be > 0, max_gap_ms and warmup_ms "
                f">= 0, got {min_speech_ms}, {min_silence_ms}, {max_gap_ms}, {warmup_ms}"
            )
        self.sample_rate = sample_rate
        self.aggressiveness = aggressiveness
        self.frame_ms = frame_ms
        self.frame_bytes = sample_rate * frame_ms // 1000 * 2
        self.min_silence_s = min_silence_ms / 1000
        self._frame_s = frame_ms / 1000
        hangover = _HANGOVER_MAX1[aggressiveness][frame_ms]
        self._hangover_frames = hangover
        self._end_hangover_s = _END_HANGOVER[aggressiveness][frame_ms] * self._frame_s
        # A burst with a single frame webrtcvad really scored as speech is reported as
        # 1 + hangover voiced frames; asking for one more means two real speech frames.
        self._min_speech_frames = max(-(-min_speech_ms // frame_ms), hangover + 2)
        self._max_gap_frames = max_gap_ms // frame_ms
        self._warmup_frames = -(-warmup_ms // frame_ms)
        self._vad = webrtcvad.Vad(aggressiveness)
        self._warmup_left = self._warmup_frames
        self.speaking = False
        self._reset_state()

    @classmethod
    def from_settings(
        cls, settings: VadSettings, sample_rate: int, *, frame_ms: int = 20
    ) -> VadSegmenter:
        """A segmenter configured from an agent's ``vad`` settings."""
        return cls(
            sample_rate=sample_rate,
            aggressiveness=settings.aggressiveness,
            min_speech_ms=settings.min_speech_ms,
            min_silence_ms=settings.min_silence_ms,
            frame_ms=frame_ms,
        )

    def _reset_state(self) -> None:
        self.speaking = False
        # a candidate run while not speaking
        self._run_start: float | None = None  # start of its first voiced frame
        self._voiced = 0  # voiced frames counted, hangover of finished bursts removed
        self._burst = 0  # frames in the current uninterrupted voiced burst
        self._burst_counted = 0  # of which counted (not in the warm-up)
        self._gap = 0  # consecutive unvoiced frames since the last voiced one
        self._burst_start = 0.0
        # while speaking
        self._last_voiced_end = 0.0
        self._speech_end: float | None = None  # placed at the first unvoiced frame

    def reset(self) -> None:
        """Forget everything, including webrtcvad's adapted noise model."""
        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._warmup_left = self._warmup_frames
        self._reset_state()

    def is_speech(self, frame: bytes) -> bool:
        """webrtcvad's own decision for one frame (validated)."""
        if len(frame) != self.frame_bytes:
            raise ValueError(
                f"VAD frame must be {self.frame_bytes} bytes ({self.frame_ms} ms of pcm16 at "
                f"{self.sample_rate} Hz), got {len(frame)}"
            )
        return bool(self._vad.is_speech(frame, self.sample_rate))

    def process(self, frame: bytes, t: float) -> list[VadEvent]:
        """Feed one frame starting at ``t`` seconds; return the events it decided."""
        voiced = self.is_speech(frame)
        end = t + self._frame_s
        if self.speaking:
            return self._while_speaking(voiced, t, end)
        counted = self._warmup_left <= 0
        if not counted and frame.strip(b"\x00"):  # only frames with signal warm it up
            self._warmup_left -= 1
        return self._while_silent(voiced, counted, t, end)

    def _while_silent(self, voiced: bool, counted: bool, t: float, end: float) -> list[VadEvent]:
        if voiced:
            if self._run_start is None:
                self._run_start = t
                self._voiced = 0
            if self._burst == 0:
                self._burst_start = t
                self._burst_counted = 0
            self._burst += 1
            self._gap = 0
            if counted:
                self._voiced += 1
                self._burst_counted += 1
            if self._voiced >= self._min_speech_frames:
                start = self._run_start
                self._run_start = None
                self.speaking = True
                self._last_voiced_end = end
                self._speech_end = None
                return [VadEvent("speech_started", start, end)]
            return []
        if self._run_start is None:
            return []
        if self._burst:
            # the burst that just ended carried hangover frames that were not speech
            self._voiced -= min(self._hangover_frames, self._burst - 1, self._burst_counted)
            self._burst = 0
        self._gap += 1
        if self._gap > self._max_gap_frames:
            self._run_start = None
            self._voiced = 0
            self._gap = 0
        return []

    def _while_speaking(self, voiced: bool, t: float, end: float) -> list[VadEvent]:
        if voiced:
            if self._speech_end is not None:  # speech resumed after a short pause
                self._burst_start = t
            self._last_voiced_end = end
            self._speech_end = None
            return []
        if self._speech_end is None:
            # the first unvoiced frame: the last voiced frames were webrtcvad's hangover
            self._speech_end = max(
                self._last_voiced_end - self._end_hangover_s, self._burst_start + self._frame_s
            )
        if end - self._speech_end >= self.min_silence_s - 1e-9:
            speech_end = self._speech_end
            self._reset_state()
            return [VadEvent("speech_ended", speech_end, end)]
        return []
