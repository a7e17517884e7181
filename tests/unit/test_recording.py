"""The stereo recorder's timeline: caller left, agent right, cleared audio left out."""

from __future__ import annotations

import numpy as np

from pipelines.audio import pcm16_to_mulaw
from pipelines.recording import StereoRecorder, recording_format
from providers.base import AudioFormat

PCM16 = AudioFormat("pcm16", 16000)
MULAW = AudioFormat("mulaw", 8000)
FRAME = 320  # samples in 20 ms at 16 kHz


def tone(value: int, samples: int = FRAME) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


def channels(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    stereo = np.frombuffer(data, dtype="<i2")
    return stereo[0::2], stereo[1::2]


def runs(samples: np.ndarray, value: int) -> list[tuple[int, int]]:
    """(start, end) sample ranges where the channel equals ``value``."""
    hit = np.concatenate(([False], samples == value, [False]))
    edges = np.flatnonzero(np.diff(hit.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2], strict=True)]


def test_format_follows_the_wider_side() -> None:
    assert recording_format(MULAW, MULAW).sample_rate == 8000
    assert recording_format(MULAW, PCM16).sample_rate == 16000
    assert recording_format(AudioFormat("pcm16", 48000), PCM16).sample_rate == 16000


def test_caller_left_agent_right_on_one_clock() -> None:
    rec = StereoRecorder(PCM16, PCM16)
    out = b""
    t = 0.0
    for i in range(100):  # 2 s of caller audio in real time
        t = (i + 1) * 0.02
        rec.on_input(tone(1000), t)
        if 50 <= i < 60:  # the agent plays 200 ms starting at 1.0 s
            rec.on_output(tone(2000), i * 0.02)
    out += rec.drain(t)
    out += rec.finish()
    left, right = channels(out)
    assert len(left) == 100 * FRAME
    assert runs(left, 1000) == [(0, 100 * FRAME)]
    assert runs(right, 2000) == [(50 * FRAME, 60 * FRAME)]
    assert rec.duration_s == 2.0


def test_a_late_start_and_a_pause_are_silence_not_a_shift() -> None:
    rec = StereoRecorder(PCM16, PCM16)
    rec.on_input(tone(500), 0.52)  # the caller's first frame ends at 0.52 s
    rec.on_input(tone(500), 0.54)
    rec.on_input(tone(500), 1.04)  # half a second without audio (a stalled stream)
    left, _right = channels(rec.finish())
    assert runs(left, 500) == [(8000, 8640), (16320, 16640)]


def test_jitter_within_the_join_gap_keeps_the_stream_contiguous() -> None:
    rec = StereoRecorder(PCM16, PCM16)
    for i, t in enumerate([0.02, 0.02, 0.07, 0.08, 0.08, 0.13]):  # bursty arrival
        rec.on_input(tone(100 + i), t)
    left, _ = channels(rec.finish())
    assert [left[i * FRAME] for i in range(6)] == [100, 101, 102, 103, 104, 105]


def test_clear_drops_what_was_sent_ahead_but_never_played() -> None:
    rec = StereoRecorder(PCM16, PCM16)
    # the playout sends three frames at once (two of lead), then one every 20 ms
    for t in (1.0, 1.0, 1.0, 1.02, 1.04):
        rec.on_output(tone(3000), t)
    # barge-in at 1.05 s: the transport drops the rest of its buffer
    rec.on_clear(1.05)
    # the reply resumes later, after a false interruption
    rec.on_output(tone(4000), 2.0)
    _left, right = channels(rec.finish())
    assert runs(right, 3000) == [(16000, 16800)]  # 1.00 s .. 1.05 s was heard
    assert runs(right, 4000) == [(32000, 32320)]
    assert rec.agent_samples_cut == 5 * FRAME - 800


def test_drain_hands_out_only_audio_a_clear_can_no_longer_change() -> None:
    rec = StereoRecorder(PCM16, PCM16, horizon_s=0.5)
    for i in range(50):
        rec.on_input(tone(1), (i + 1) * 0.02)
    first = rec.drain(1.0)
    assert len(first) == 0.5 * 16000 * 4
    rec.on_output(tone(7), 0.8)
    rest = rec.finish()
    left, right = channels(first + rest)
    assert len(left) == 16000
    assert runs(right, 7) == [(12800, 13120)]


def test_telephony_formats_are_decoded() -> None:
    rec = StereoRecorder(MULAW, MULAW)
    assert rec.format.sample_rate == 8000
    frame = pcm16_to_mulaw(tone(8000, 160))
    for i in range(10):
        rec.on_input(frame, (i + 1) * 0.02)
        rec.on_output(frame, i * 0.02)
    left, right = channels(rec.finish())
    assert len(left) == 1600
    assert abs(int(left[800]) - 8000) < 300 and abs(int(right[800]) - 8000) < 300
