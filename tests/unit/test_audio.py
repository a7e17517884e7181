"""Codecs, resampling, conversion and framing in pipelines/audio.py."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.audio import (
    AudioConverter,
    Reframer,
    StreamResampler,
    alaw_to_pcm16,
    from_pcm16,
    mulaw_to_pcm16,
    pcm16_to_alaw,
    pcm16_to_mulaw,
    rms_dbfs,
    silence,
    to_pcm16,
)
from providers.base import AudioFormat

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the reference: deprecated, still in 3.11; used only here

ALL_SAMPLES = np.arange(65536, dtype=np.uint32).astype(np.uint16).tobytes()
ALL_CODES = bytes(range(256))


def sine(rate: int, seconds: float, freq: float = 440.0, amp: float = 12000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --------------------------------------------------------------------------- G.711


def test_mulaw_encode_matches_audioop_for_every_sample() -> None:
    assert pcm16_to_mulaw(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES, 2)


def test_alaw_encode_matches_audioop_for_every_sample() -> None:
    assert pcm16_to_alaw(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES, 2)


def test_mulaw_decode_matches_audioop_for_every_code() -> None:
    assert mulaw_to_pcm16(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)


def test_alaw_decode_matches_audioop_for_every_code() -> None:
    assert alaw_to_pcm16(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_g711_code_round_trip_is_stable(encoding: str) -> None:
    # decode -> encode gives back every code (except μ-law's negative zero 0x7F -> 0xFF)
    pcm = to_pcm16(ALL_CODES, encoding)  # type: ignore[arg-type]
    again = from_pcm16(pcm, encoding)  # type: ignore[arg-type]
    differing = {a for a, b in zip(ALL_CODES, again, strict=True) if a != b}
    assert differing <= {0x7F}


def test_encoders_reject_half_samples() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        pcm16_to_mulaw(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="even number of bytes"):
        pcm16_to_alaw(b"\x00")


def test_unknown_encoding_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown audio encoding"):
        to_pcm16(b"\x00\x00", "opus")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- silence


def test_silence_bytes_per_encoding() -> None:
    assert silence(AudioFormat("mulaw", 8000), 20) == b"\xff" * 160
    assert silence(AudioFormat("alaw", 8000), 20) == b"\xd5" * 160
    assert silence(AudioFormat("pcm16", 16000), 20) == b"\x00" * 640
    assert silence(AudioFormat("pcm16", 24000), 0) == b""
    # it is what the codecs make of zero samples
    zeros = bytes(320)
    assert silence(AudioFormat("mulaw", 8000), 20) == audioop.lin2ulaw(zeros, 2)
    assert silence(AudioFormat("alaw", 8000), 20) == audioop.lin2alaw(zeros, 2)


# --------------------------------------------------------------------------- resampling


def test_resampler_identity_returns_the_same_object() -> None:
    resampler = StreamResampler(16000, 16000)
    data = sine(16000, 0.02).tobytes()
    assert resampler.process(data) is data
    assert resampler.flush() == b""


@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    [(8000, 16000), (16000, 8000), (24000, 8000), (48000, 16000), (16000, 24000), (22050, 8000)],
)
def test_chunked_resampling_equals_one_shot(in_rate: int, out_rate: int) -> None:
    signal = sine(in_rate, 1.0)
    resampler = StreamResampler(in_rate, out_rate)
    pieces = [resampler.process(c) for c in chunks(signal.tobytes(), in_rate // 50 * 2)]
    out = np.frombuffer(b"".join(pieces) + resampler.flush(), dtype="<i2").astype(int)

    one_shot = soxr.resample(signal, in_rate, out_rate).astype(int)  # libsoxr's int16 path
    assert len(out) == len(one_shot)
    assert np.max(np.abs(out - one_shot)) <= 2  # its dither moves the last bit
    exact = np.rint(soxr.resample(signal.astype(np.float32), in_rate, out_rate)).astype(int)
    assert np.array_equal(out, exact)


def _max_jump(samples: np.ndarray) -> int:
    return int(np.max(np.abs(np.diff(samples.astype(int)))))


@pytest.mark.parametrize("low_latency", [False, True])
@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (24000, 8000), (16000, 48000)])
def test_no_clicks_at_chunk_borders(in_rate: int, out_rate: int, low_latency: bool) -> None:
    amp, freq = 12000.0, 440.0
    signal = sine(in_rate, 1.0, freq, amp)
    resampler = StreamResampler(in_rate, out_rate, low_latency=low_latency)
    out = np.frombuffer(
        b"".join(resampler.process(c) for c in chunks(signal.tobytes(), in_rate // 50 * 2))
        + resampler.flush(),
        dtype="<i2",
    )
    steady = out[out_rate // 10 : -out_rate // 10]  # skip the filter's ramp in and out
    clean_jump = amp * 2 * math.sin(math.pi * freq / out_rate)  # largest step of a clean sine
    assert _max_jump(steady) <= clean_jump * 1.02 + 2
    # and it is still the same tone at the same level
    assert rms_dbfs(steady.tobytes()) == pytest.approx(rms_dbfs(signal.tobytes()), abs=0.1)


def test_low_latency_mode_outputs_every_chunk() -> None:
    resampler = StreamResampler(8000, 16000, low_latency=True)
    sizes = [len(resampler.process(c)) for c in chunks(sine(8000, 1.0).tobytes(), 320)]
    assert all(size == 640 for size in sizes[5:])  # steady 20 ms out for 20 ms in
    total = sum(sizes) + len(resampler.flush())
    assert total == 16000 * 2


def test_resampler_restarts_identically_after_flush() -> None:
    data = sine(8000, 0.5).tobytes()
    resampler = StreamResampler(8000, 16000)
    first = b"".join(resampler.process(c) for c in chunks(data, 320)) + resampler.flush()
    second = b"".join(resampler.process(c) for c in chunks(data, 320)) + resampler.flush()
    assert first == second
    assert len(first) == 8000 * 2  # 0.5 s at 16 kHz, nothing lost or added


# --------------------------------------------------------------------------- conversion

PCM16_16K = AudioFormat("pcm16", 16000)
PCM16_8K = AudioFormat("pcm16", 8000)
MULAW_8K = AudioFormat("mulaw", 8000)
ALAW_8K = AudioFormat("alaw", 8000)
PCM16_24K = AudioFormat("pcm16", 24000)


def _convert(converter: AudioConverter, data: bytes, size: int) -> bytes:
    return b"".join(converter.process(c) for c in chunks(data, size)) + converter.flush()


def test_converter_identity_is_a_pass_through() -> None:
    converter = AudioConverter(MULAW_8K, MULAW_8K)
    data = bytes(range(160))
    assert converter.process(data) is data
    assert converter.flush() == b""


def test_low_latency_converter_keeps_pace_with_the_caller() -> None:
    converter = AudioConverter(MULAW_8K, PCM16_16K, low_latency=True)
    law = pcm16_to_mulaw(sine(8000, 1.0).tobytes())
    sizes = [len(converter.process(c)) for c in chunks(law, 160)]
    assert all(size == 640 for size in sizes[5:])  # 20 ms in, 20 ms out, every frame


def test_converter_same_rate_is_the_codec() -> None:
    pcm = sine(8000, 0.2).tobytes()
    assert _convert(AudioConverter(PCM16_8K, MULAW_8K), pcm, 97 * 2) == pcm16_to_mulaw(pcm)
    law = pcm16_to_alaw(pcm)
    assert _convert(AudioConverter(ALAW_8K, PCM16_8K), law, 33) == alaw_to_pcm16(law)
    assert _convert(AudioConverter(ALAW_8K, MULAW_8K), law, 160) == pcm16_to_mulaw(
        alaw_to_pcm16(law)
    )


def test_converter_mulaw_8k_to_pcm16_16k_and_back_keeps_the_tone() -> None:
    pcm = sine(8000, 1.0, 300.0)
    law = pcm16_to_mulaw(pcm.tobytes())
    wide = _convert(AudioConverter(MULAW_8K, PCM16_16K), law, 160)
    assert len(wide) == 16000 * 2
    back = _convert(AudioConverter(PCM16_16K, MULAW_8K), wide, 640)
    assert len(back) == 8000
    restored = np.frombuffer(mulaw_to_pcm16(back), dtype="<i2").astype(float)
    middle = slice(800, -800)
    error = restored[middle] - pcm.astype(float)[middle]
    snr = 10 * math.log10(np.mean(pcm.astype(float)[middle] ** 2) / np.mean(error**2))
    assert snr > 30  # two μ-law quantizations (~38 dB each) and two resamplings


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=40))
def test_converter_output_does_not_depend_on_chunking(sizes: list[int]) -> None:
    data = sine(24000, 0.3).tobytes()
    whole = _convert(AudioConverter(PCM16_24K, MULAW_8K), data, len(data))
    converter = AudioConverter(PCM16_24K, MULAW_8K)
    out, pos = [], 0
    for size in sizes:  # any byte counts, odd ones split samples
        out.append(converter.process(data[pos : pos + size]))
        pos += size
    out.append(converter.process(data[pos:]))
    out.append(converter.flush())
    assert b"".join(out) == whole


# --------------------------------------------------------------------------- framing


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([160, 320, 640]),
    st.lists(st.binary(min_size=0, max_size=1500), max_size=20),
)
def test_reframer_yields_exact_frames_in_order(frame: int, pieces: list[bytes]) -> None:
    reframer = Reframer(frame)
    frames: list[bytes] = []
    for piece in pieces:
        frames += reframer.push(piece)
    assert all(len(f) == frame for f in frames)
    data = b"".join(pieces)
    assert b"".join(frames) == data[: len(frames) * frame]
    assert reframer.pending == len(data) % frame
    tail = reframer.flush(pad=False)
    assert (tail or b"") == data[len(frames) * frame :]
    assert reframer.flush() is None


@pytest.mark.parametrize(
    ("fmt", "fill"),
    [(MULAW_8K, b"\xff"), (ALAW_8K, b"\xd5"), (PCM16_16K, b"\x00")],
)
def test_reframer_pads_the_tail_with_the_formats_silence(fmt: AudioFormat, fill: bytes) -> None:
    reframer = Reframer.for_format(fmt)
    frame = fmt.frame_bytes()
    assert reframer.push(b"\x01" * (frame + 10)) == [b"\x01" * frame]
    assert reframer.flush() == b"\x01" * 10 + fill * (frame - 10)
    assert reframer.flush() is None


def test_reframer_passes_whole_frames_through() -> None:
    reframer = Reframer(320)
    frame = bytes(range(256)) + bytes(64)
    assert reframer.push(frame) == [frame]
    assert reframer.push(b"") == []
    assert reframer.pending == 0


def test_reframer_validates_the_frame_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        Reframer(0)
    with pytest.raises(ValueError, match="even"):
        Reframer(321)
    assert Reframer(161, "mulaw").frame_bytes == 161


# --------------------------------------------------------------------------- levels


def test_rms_dbfs() -> None:
    full = sine(16000, 0.5, 1000.0, 32767.0).tobytes()
    half = sine(16000, 0.5, 1000.0, 16384.0).tobytes()
    assert rms_dbfs(full) == pytest.approx(-3.01, abs=0.01)
    assert rms_dbfs(full) - rms_dbfs(half) == pytest.approx(6.02, abs=0.01)
    assert rms_dbfs(b"") == -math.inf
    assert rms_dbfs(bytes(640)) == -math.inf
