"""VadSegmenter on real speech (espeak-ng, converted with sox) and on silence and noise."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.agent_config import VadSettings
from pipelines.audio import mulaw_to_pcm16
from pipelines.vad import VadEvent, VadSegmenter
from tests.support.speech import speech

TOLERANCE_S = 0.1
PAD_S = 0.8  # silence before the speech (an odd 20 ms multiple plus change below)


def true_bounds(pcm: np.ndarray, rate: int) -> tuple[float, float]:
    """Where speech really is: first and last 10 ms window above -50 dBFS."""
    win = rate // 100
    n = len(pcm) // win
    rms = np.sqrt(np.mean(pcm[: n * win].reshape(n, win).astype(float) ** 2, axis=1))
    active = np.flatnonzero(rms > 32768 * 10 ** (-50 / 20))
    return active[0] * 0.01, (active[-1] + 1) * 0.01


def segment(samples: np.ndarray, rate: int, **options: int) -> list[VadEvent]:
    vad = VadSegmenter(sample_rate=rate, **options)
    frame = rate // 50
    events: list[VadEvent] = []
    for i in range(0, len(samples) - frame + 1, frame):
        events += vad.process(samples[i : i + frame].tobytes(), i / rate)
    return events


def padded(pcm: np.ndarray, rate: int, before: float, after: float = 1.0) -> np.ndarray:
    return np.concatenate(
        [np.zeros(int(before * rate), np.int16), pcm, np.zeros(int(after * rate), np.int16)]
    )


def utterance(text: str, rate: int) -> np.ndarray:
    return np.frombuffer(speech(text, rate=rate), dtype="<i2")


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize(
    "text",
    ["Hello, I would like to book a table for two people.", "Yes.", "Where are you located?"],
)
def test_speech_boundaries_match_the_signal(rate: int, text: str) -> None:
    pcm = utterance(text, rate)
    start, end = true_bounds(pcm, rate)
    before = PAD_S + 0.013  # not a frame multiple: boundaries fall inside frames
    events = segment(padded(pcm, rate, before), rate)

    assert [e.kind for e in events] == ["speech_started", "speech_ended"]
    started, ended = events
    assert started.t == pytest.approx(before + start, abs=TOLERANCE_S)
    assert ended.t == pytest.approx(before + end, abs=TOLERANCE_S)
    # decisions come after the evidence: min_speech_ms of speech, min_silence_ms of silence
    assert started.decided_at - started.t >= 0.1 - 1e-6
    assert ended.decided_at - ended.t == pytest.approx(0.3, abs=0.021)


def test_speech_through_mulaw_at_8k_like_a_phone_call() -> None:
    law = speech("What time do you open tomorrow?", rate=8000, encoding="u-law", bits=8)
    pcm = np.frombuffer(mulaw_to_pcm16(law), dtype="<i2")
    start, end = true_bounds(pcm, 8000)
    events = segment(padded(pcm, 8000, 0.5), 8000, aggressiveness=3)
    assert [e.kind for e in events] == ["speech_started", "speech_ended"]
    assert events[0].t == pytest.approx(0.5 + start, abs=TOLERANCE_S)
    assert events[1].t == pytest.approx(0.5 + end, abs=TOLERANCE_S)


@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
def test_every_aggressiveness_finds_the_utterance(aggressiveness: int) -> None:
    pcm = utterance("Where are you located?", 16000)
    start, end = true_bounds(pcm, 16000)
    events = segment(padded(pcm, 16000, 0.6), 16000, aggressiveness=aggressiveness)
    assert [e.kind for e in events] == ["speech_started", "speech_ended"]
    assert events[0].t == pytest.approx(0.6 + start, abs=TOLERANCE_S)
    assert events[1].t == pytest.approx(0.6 + end, abs=TOLERANCE_S)


@pytest.mark.parametrize("rate", [8000, 16000, 32000, 48000])
def test_no_events_in_digital_silence(rate: int) -> None:
    assert segment(np.zeros(rate * 3, np.int16), rate) == []


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
@pytest.mark.parametrize("level_dbfs", [-70, -60, -50, -40])
@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
@pytest.mark.parametrize("lead_in_s", [0.0, 0.5])
def test_no_events_in_low_noise(
    rate: int, level_dbfs: int, aggressiveness: int, lead_in_s: float
) -> None:
    # white noise from the first frame, or after digital silence (webrtcvad calls the first
    # ~100 ms of either speech until its noise model adapts: the warm-up absorbs it)
    rng = np.random.default_rng(level_dbfs + rate + aggressiveness)
    noise = rng.normal(0.0, 32768 * 10 ** (level_dbfs / 20), rate * 2)
    samples = np.concatenate(
        [np.zeros(int(lead_in_s * rate), np.int16), np.clip(np.round(noise), -32768, 32767)]
    ).astype(np.int16)
    assert segment(samples, rate, aggressiveness=aggressiveness) == []


def test_speech_from_the_very_first_frame_keeps_its_true_start() -> None:
    pcm = utterance("Where are you located?", 16000)
    start, end = true_bounds(pcm, 16000)
    events = segment(padded(pcm, 16000, 0.0), 16000)
    assert [e.kind for e in events] == ["speech_started", "speech_ended"]
    assert events[0].t == pytest.approx(start, abs=TOLERANCE_S)
    assert events[0].decided_at > 0.16  # the warm-up delays the decision, not the time
    assert events[1].t == pytest.approx(end, abs=TOLERANCE_S)


def _two_parts(gap_s: float, rate: int = 16000) -> tuple[np.ndarray, float]:
    first = utterance("I would like to book a table", rate)
    second = utterance("for four people tomorrow evening", rate)
    _, first_end = true_bounds(first, rate)
    second_start, _ = true_bounds(second, rate)
    first = first[: int(first_end * rate)]
    second = second[int(second_start * rate) :]
    joined = np.concatenate([first, np.zeros(int(gap_s * rate), np.int16), second])
    return padded(joined, rate, 0.5), 0.5 + first_end


def test_a_pause_shorter_than_min_silence_does_not_end_speech() -> None:
    samples, _ = _two_parts(0.15)
    events = segment(samples, 16000, min_silence_ms=300)
    assert [e.kind for e in events] == ["speech_started", "speech_ended"]


def test_a_pause_longer_than_min_silence_splits_the_speech() -> None:
    samples, first_end = _two_parts(0.7)
    events = segment(samples, 16000, min_silence_ms=300)
    assert [e.kind for e in events] == ["speech_started", "speech_ended"] * 2
    assert events[1].t == pytest.approx(first_end, abs=TOLERANCE_S)
    # the same pause with a longer min_silence_ms is one utterance
    assert len(segment(samples, 16000, min_silence_ms=900)) == 2


def test_speaking_flag_and_reset() -> None:
    speech_only = utterance("Hello there.", 16000)
    _, end = true_bounds(speech_only, 16000)
    pcm = padded(speech_only[: int(end * 16000)], 16000, 0.3, 0.0)
    vad = VadSegmenter(sample_rate=16000)
    assert not vad.speaking
    saw_start = False
    for i in range(0, len(pcm) - 319, 320):
        for event in vad.process(pcm[i : i + 320].tobytes(), i / 16000):
            saw_start = saw_start or event.kind == "speech_started"
    assert saw_start and vad.speaking  # no trailing silence: still speaking
    vad.reset()
    assert not vad.speaking
    assert vad.process(bytes(640), 10.0) == []


def test_from_settings_uses_the_agents_vad_settings() -> None:
    settings = VadSettings(aggressiveness=3, min_speech_ms=200, min_silence_ms=500)
    vad = VadSegmenter.from_settings(settings, 8000)
    assert (vad.aggressiveness, vad.sample_rate, vad.frame_bytes) == (3, 8000, 320)
    pcm = utterance("Where are you located?", 8000)
    events = []
    samples = padded(pcm, 8000, 0.4)
    for i in range(0, len(samples) - 159, 160):
        events += vad.process(samples[i : i + 160].tobytes(), i / 8000)
    assert [e.kind for e in events] == ["speech_started", "speech_ended"]
    assert events[0].decided_at - events[0].t >= 0.2 - 1e-6
    assert events[1].decided_at - events[1].t == pytest.approx(0.5, abs=0.021)


def test_invalid_input_is_rejected_with_clear_messages() -> None:
    with pytest.raises(ValueError, match=r"sample rate must be one of 8000, 16000, 32000, 48000"):
        VadSegmenter(sample_rate=44100)
    with pytest.raises(ValueError, match="10, 20 or 30 ms"):
        VadSegmenter(sample_rate=16000, frame_ms=25)
    with pytest.raises(ValueError, match="aggressiveness must be 0-3"):
        VadSegmenter(sample_rate=16000, aggressiveness=4)
    vad = VadSegmenter(sample_rate=16000)
    with pytest.raises(ValueError, match=r"640 bytes \(20 ms of pcm16 at 16000 Hz\), got 320"):
        vad.process(bytes(320), 0.0)
    vad10 = VadSegmenter(sample_rate=8000, frame_ms=10)
    assert vad10.process(bytes(160), 0.0) == []
