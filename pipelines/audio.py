"""Pure audio building blocks: G.711 codecs, streaming resampling, conversion, framing.

Everything here is synchronous and free of I/O so the conversation engine can call it
inline on the event loop: a 20 ms frame costs a few microseconds. Audio is mono and
travels as ``bytes`` in an :class:`~providers.base.AudioFormat`; ``pcm16`` is signed
16-bit little-endian, μ-law and A-law are one byte a sample (ITU-T G.711, bit-exact with
the reference implementation that CPython's ``audioop`` also uses).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import soxr

from providers.base import AudioFormat, Encoding

__all__ = [
    "SILENCE_BYTE",
    "AudioConverter",
    "Reframer",
    "StreamResampler",
    "alaw_to_pcm16",
    "from_pcm16",
    "mulaw_to_pcm16",
    "pcm16_to_alaw",
    "pcm16_to_mulaw",
    "rms_dbfs",
    "silence",
    "to_pcm16",
]

Int16Array = npt.NDArray[np.int16]

#: The byte value of digital silence per encoding (what a zero sample encodes to).
SILENCE_BYTE: dict[Encoding, int] = {"pcm16": 0x00, "mulaw": 0xFF, "alaw": 0xD5}

_ENCODINGS: tuple[Encoding, ...] = ("pcm16", "mulaw", "alaw")


# --------------------------------------------------------------------------- G.711 tables
#
# Built once at import with numpy from the G.711 reference algorithm (Sun's g711.c, the
# code behind audioop): encoders are 65536-entry tables indexed by the sample's 16-bit
# pattern, decoders 256-entry tables. Encoding or decoding is then one fancy-index.


def _all_samples() -> npt.NDArray[np.int32]:
    """Every int16 value, ordered by its unsigned bit pattern (the table index)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _build_mulaw_encoder() -> npt.NDArray[np.uint8]:
    value = _all_samples() >> 2  # 14-bit range
    negative = value < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(value), 8159) + 33  # clip, then add the bias (0x84 >> 2)
    seg_end = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    seg = np.searchsorted(seg_end, magnitude, side="left")
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((magnitude >> (np.minimum(seg, 7) + 1)) & 0xF))
    return (code ^ mask).astype(np.uint8)


def _build_alaw_encoder() -> npt.NDArray[np.uint8]:
    value = _all_samples() >> 3  # 13-bit range
    negative = value < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, -value - 1, value)
    seg_end = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    seg = np.searchsorted(seg_end, magnitude, side="left")
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((magnitude >> shift) & 0xF))
    return (code ^ mask).astype(np.uint8)


def _build_mulaw_decoder() -> Int16Array:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return np.where(code & 0x80, 0x84 - t, t - 0x84).astype("<i2")


def _build_alaw_decoder() -> Int16Array:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (code & 0x70) >> 4
    t = (code & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(code & 0x80, t, -t).astype("<i2")


_MULAW_ENCODE = _build_mulaw_encoder()
_ALAW_ENCODE = _build_alaw_encoder()
_MULAW_DECODE = _build_mulaw_decoder()
_ALAW_DECODE = _build_alaw_decoder()


def _pcm16_array(pcm: bytes) -> Int16Array:
    """A read-only int16 view of little-endian PCM (no copy on little-endian hosts)."""
    if len(pcm) % 2:
        raise ValueError(f"pcm16 audio must have an even number of bytes, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16, copy=False)


def _pcm16_bytes(samples: Int16Array) -> bytes:
    return samples.astype("<i2", copy=False).tobytes()


def pcm16_to_mulaw(pcm: bytes) -> bytes:
    """Encode PCM16 LE to G.711 μ-law (same bytes as ``audioop.lin2ulaw(pcm, 2)``)."""
    if len(pcm) % 2:
        raise ValueError(f"pcm16 audio must have an even number of bytes, got {len(pcm)}")
    return _MULAW_ENCODE[np.frombuffer(pcm, dtype="<u2")].tobytes()


def pcm16_to_alaw(pcm: bytes) -> bytes:
    """Encode PCM16 LE to G.711 A-law (same bytes as ``audioop.lin2alaw(pcm, 2)``)."""
    if len(pcm) % 2:
        raise ValueError(f"pcm16 audio must have an even number of bytes, got {len(pcm)}")
    return _ALAW_ENCODE[np.frombuffer(pcm, dtype="<u2")].tobytes()


def mulaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 μ-law to PCM16 LE (same bytes as ``audioop.ulaw2lin(data, 2)``)."""
    return _MULAW_DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes()


def alaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 A-law to PCM16 LE (same bytes as ``audioop.alaw2lin(data, 2)``)."""
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes()


def _decode(data: bytes, encoding: Encoding) -> Int16Array:
    if encoding == "pcm16":
        return _pcm16_array(data)
    table = _MULAW_DECODE if encoding == "mulaw" else _ALAW_DECODE
    return table[np.frombuffer(data, dtype=np.uint8)].astype(np.int16, copy=False)


def _encode(samples: Int16Array, encoding: Encoding) -> bytes:
    if encoding == "pcm16":
        return _pcm16_bytes(samples)
    table = _MULAW_ENCODE if encoding == "mulaw" else _ALAW_ENCODE
    return table[samples.view(np.uint16)].tobytes()


def _check_encoding(encoding: str) -> Encoding:
    for known in _ENCODINGS:
        if encoding == known:
            return known
    raise ValueError(f"unknown audio encoding {encoding!r}; expected one of {_ENCODINGS}")


def to_pcm16(data: bytes, encoding: Encoding) -> bytes:
    """Decode ``data`` in ``encoding`` to PCM16 LE (pcm16 is returned as is)."""
    if _check_encoding(encoding) == "pcm16":
        return data
    return _encode(_decode(data, encoding), "pcm16")


def from_pcm16(pcm: bytes, encoding: Encoding) -> bytes:
    """Encode PCM16 LE ``pcm`` to ``encoding`` (pcm16 is returned as is)."""
    if _check_encoding(encoding) == "pcm16":
        return pcm
    return _encode(_pcm16_array(pcm), encoding)


# --------------------------------------------------------------------------- resampling


class StreamResampler:
    """Streaming PCM16 sample-rate conversion with libsoxr, state kept across chunks.

    Chunk borders are seamless: the output of many small chunks equals the one-shot
    resample of the whole signal. With equal rates it is the identity and returns the
    input object itself.

    libsoxr runs in float32 here and we round back to int16 ourselves: its int16 mode adds
    random dither, so the same audio would come out different on every run and for every
    chunking. In float32 the output is reproducible to the bit (and costs ~2 µs a frame).

    libsoxr's default engine works in blocks, so output comes in bursts and lags the input
    by a varying amount (HQ 8 kHz→16 kHz: 0 to ~115 ms). ``low_latency=True`` selects
    libsoxr's variable-rate engine at a fixed ratio instead (python-soxr marks it
    experimental): the same passband, output every chunk with a constant delay of ~15-30
    ms, at the cost of not matching the one-shot resample sample for sample.
    """

    def __init__(
        self, in_rate: int, out_rate: int, *, quality: str = "HQ", low_latency: bool = False
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.identity = in_rate == out_rate
        self._stream: soxr.ResampleStream | None = None
        if not self.identity:
            options = {"vr": True} if low_latency else {}  # soxr >= 1.0 has ``vr``
            self._stream = soxr.ResampleStream(
                in_rate, out_rate, 1, dtype="float32", quality=quality, **options
            )

    def _process(self, samples: Int16Array, *, last: bool = False) -> Int16Array:
        assert self._stream is not None
        out = self._stream.resample_chunk(samples.astype(np.float32), last=last)
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    def process(self, pcm: bytes) -> bytes:
        """Resample one chunk (any whole number of samples); may return fewer bytes or none."""
        if self.identity:
            if len(pcm) % 2:
                raise ValueError(f"pcm16 audio must have an even number of bytes, got {len(pcm)}")
            return pcm
        samples = _pcm16_array(pcm)
        if samples.size == 0:
            return b""
        return _pcm16_bytes(self._process(samples))

    def flush(self) -> bytes:
        """The samples still inside the filter; the stream is then ready for a new signal."""
        if self._stream is None:
            return b""
        tail = self._process(np.zeros(0, dtype=np.int16), last=True)
        self._stream.clear()
        return _pcm16_bytes(tail)


class AudioConverter:
    """Streaming conversion between any two formats: decode → resample → encode.

    ``process`` takes chunks of any size (a pcm16 chunk that ends mid-sample keeps the odd
    byte for the next call) and returns what is ready; ``flush`` returns the resampler's
    tail at the end of a stream. Equal formats are passed through untouched.
    """

    def __init__(
        self,
        src: AudioFormat,
        dst: AudioFormat,
        *,
        quality: str = "HQ",
        low_latency: bool = False,
    ) -> None:
        _check_encoding(src.encoding)
        _check_encoding(dst.encoding)
        self.src = src
        self.dst = dst
        self.identity = src == dst
        self._resampler: StreamResampler | None = None
        if src.sample_rate != dst.sample_rate:
            self._resampler = StreamResampler(
                src.sample_rate, dst.sample_rate, quality=quality, low_latency=low_latency
            )
        self._carry = b""

    def process(self, data: bytes) -> bytes:
        if self.identity:
            return data
        if self.src.encoding == "pcm16" and (self._carry or len(data) % 2):
            data = self._carry + data
            cut = len(data) - len(data) % 2
            self._carry = data[cut:]
            data = data[:cut]
        if not data:
            return b""
        samples = _decode(data, self.src.encoding)
        if self._resampler is not None:
            samples = self._resampler._process(samples)
        return _encode(samples, self.dst.encoding)

    def flush(self) -> bytes:
        """End of stream: the resampler's tail in the target format (a dangling half
        sample is dropped). The converter can be reused for a new stream afterwards."""
        self._carry = b""
        if self.identity or self._resampler is None:
            return b""
        tail = self._resampler.flush()
        return from_pcm16(tail, self.dst.encoding) if tail else b""


# --------------------------------------------------------------------------- framing


def silence(fmt: AudioFormat, ms: int) -> bytes:
    """``ms`` milliseconds of digital silence in ``fmt`` (μ-law 0xFF, A-law 0xD5, pcm16 0)."""
    if ms < 0:
        raise ValueError(f"silence duration must be >= 0 ms, got {ms}")
    return bytes([SILENCE_BYTE[_check_encoding(fmt.encoding)]]) * fmt.frame_bytes(ms)


class Reframer:
    """Turns chunks of any size into frames of exactly ``frame_bytes`` bytes.

    Transports and TTS engines deliver audio in whatever sizes they like; the VAD, the
    paced playout and carrier media messages want fixed 20 ms frames. ``encoding`` picks
    the silence used to pad the last frame: it must match the audio, since a zero byte is
    silence in pcm16 but a full-scale sample in μ-law and A-law.
    """

    def __init__(self, frame_bytes: int, encoding: Encoding = "pcm16") -> None:
        _check_encoding(encoding)
        if frame_bytes <= 0:
            raise ValueError(f"frame size must be positive, got {frame_bytes}")
        if encoding == "pcm16" and frame_bytes % 2:
            raise ValueError(f"a pcm16 frame must have an even number of bytes, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self.encoding = encoding
        self._buf = bytearray()

    @classmethod
    def for_format(cls, fmt: AudioFormat, ms: int = 20) -> Reframer:
        """Frames of ``ms`` milliseconds of ``fmt``, padded with that format's silence."""
        return cls(fmt.frame_bytes(ms), fmt.encoding)

    @property
    def pending(self) -> int:
        """Bytes waiting for the rest of their frame."""
        return len(self._buf)

    def push(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every complete frame, oldest first."""
        size = self.frame_bytes
        if not self._buf and len(data) == size:
            return [bytes(data)]
        self._buf += data
        count = len(self._buf) // size
        if not count:
            return []
        buf = self._buf
        frames = [bytes(buf[i * size : (i + 1) * size]) for i in range(count)]
        del buf[: count * size]
        return frames

    def flush(self, pad: bool = True) -> bytes | None:
        """The incomplete tail (None when empty), padded with silence to a full frame."""
        if not self._buf:
            return None
        tail = bytes(self._buf)
        self._buf.clear()
        if pad:
            tail += bytes([SILENCE_BYTE[self.encoding]]) * (self.frame_bytes - len(tail))
        return tail

    def clear(self) -> None:
        """Drop the buffered tail (e.g. when a reply is cancelled)."""
        self._buf.clear()


# --------------------------------------------------------------------------- levels


def rms_dbfs(pcm16: bytes) -> float:
    """RMS level of PCM16 audio in dBFS (full scale 32768); ``-inf`` for empty or zeros."""
    samples = _pcm16_array(pcm16)
    if samples.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64))))
    if rms == 0.0:
        return -math.inf
    return 20.0 * math.log10(rms / 32768.0)
