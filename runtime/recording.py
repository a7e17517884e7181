"""A call's stereo recording on disk: the I/O around :class:`pipelines.recording.StereoRecorder`.

The transport's input is tapped in ``ActiveCall.push_audio`` and the agent's side by
wrapping the call's :class:`~pipelines.ports.AudioOutput` (:class:`TappedOutput`): every
frame the paced playout sends and every ``clear`` reach the recorder with their time, so
the agent channel holds what was played, not what was synthesised.

The WAV file is written while the call runs (about once a second, to
``<data_dir>/recordings/<call_id>.wav.part``), never held whole in memory; at the end its
header is completed and it is renamed to ``.wav``. A worker killed mid-call leaves a
``.part`` file whose header :func:`repair_wav` completes on the next start. A recording
never breaks a call: the first error disables it with a log line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Final

from pipelines.ports import AudioOutput
from pipelines.recording import StereoRecorder
from providers.base import AudioFormat

log = logging.getLogger(__name__)

CHANNELS: Final = 2
DRAIN_EVERY_S: Final = 1.0
WAV_HEADER_BYTES: Final = 44  # what the stdlib writes for PCM: RIFF, fmt (16), data


class TappedOutput:
    """An :class:`AudioOutput` that tells the recording what it sends and clears."""

    def __init__(self, inner: AudioOutput, recording: CallRecording) -> None:
        self.inner = inner
        self.recording = recording
        self.format = inner.format

    async def send_frame(self, frame: bytes) -> None:
        await self.inner.send_frame(frame)
        self.recording.on_output(frame)

    async def clear(self) -> None:
        self.recording.on_clear()
        await self.inner.clear()

    async def mark(self, name: str) -> None:
        await self.inner.mark(name)


class CallRecording:
    """``CallRecording(directory, call_id, input_format, output_format)``; ``wrap`` the
    output, call ``on_input`` with the caller's audio, then ``finish()``."""

    def __init__(
        self,
        directory: Path,
        call_id: str,
        input_format: AudioFormat,
        output_format: AudioFormat,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recorder = StereoRecorder(input_format, output_format)
        self.clock = clock
        self.t0 = clock()
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{call_id}.wav"
        self.part_path = directory / f"{call_id}.wav.part"
        self._file: BinaryIO | None = open(self.part_path, "wb")
        self._wav: wave.Wave_write | None = wave.open(self._file, "wb")
        self._wav.setnchannels(CHANNELS)
        self._wav.setsampwidth(2)
        self._wav.setframerate(self.recorder.format.sample_rate)
        self._last_drain = 0.0
        self.failed = False
        self.bytes_written = 0

    def wrap(self, output: AudioOutput) -> TappedOutput:
        return TappedOutput(output, self)

    def _now(self) -> float:
        return self.clock() - self.t0

    def _guard(self, fn: Callable[[], Any]) -> None:
        if self.failed:
            return
        try:
            fn()
        except Exception:
            self.failed = True
            log.exception("recording %s failed; the call goes on without it", self.path.name)
            self._close_file()

    def on_input(self, data: bytes) -> None:
        def step() -> None:
            now = self._now()
            self.recorder.on_input(data, now)
            if now - self._last_drain >= DRAIN_EVERY_S:
                self._last_drain = now
                self._write(self.recorder.drain(now))

        self._guard(step)

    def on_output(self, frame: bytes) -> None:
        self._guard(lambda: self.recorder.on_output(frame, self._now()))

    def on_clear(self) -> None:
        self._guard(lambda: self.recorder.on_clear(self._now()))

    def _write(self, data: bytes) -> None:
        if data and self._wav is not None and self._file is not None:
            self._wav.writeframesraw(data)
            self._file.flush()  # in the kernel's hands: survives a kill of the worker
            self.bytes_written += len(data)

    def _close_file(self) -> None:
        wav, self._wav = self._wav, None
        fh, self._file = self._file, None
        with contextlib.suppress(Exception):
            if wav is not None:
                wav.close()  # completes the header
        with contextlib.suppress(Exception):
            if fh is not None:
                fh.close()

    def finish(self) -> dict[str, Any] | None:
        """Write the rest, complete the file; its metadata, or None if it failed."""
        self._guard(lambda: self._write(self.recorder.finish()))
        failed = self.failed
        self._close_file()
        if failed:
            with contextlib.suppress(OSError):
                self.part_path.unlink()
            return None
        os.replace(self.part_path, self.path)
        fmt = self.recorder.format
        return {
            "path": str(self.path),
            "content_type": "audio/wav",
            "channels": CHANNELS,
            "sample_rate": fmt.sample_rate,
            "duration_s": round(self.recorder.duration_s, 3),
            "bytes": self.path.stat().st_size,
        }

    def discard(self) -> None:
        """The call never started: no recording."""
        self.failed = True
        self._close_file()
        with contextlib.suppress(OSError):
            self.part_path.unlink()


def repair_wav(part: Path) -> dict[str, Any] | None:
    """Complete the header of a recording cut short by a crash and rename it to ``.wav``.
    Returns its metadata, or None if nothing usable is there."""
    try:
        with open(part, "r+b") as fh:
            head = fh.read(WAV_HEADER_BYTES)
            if len(head) < WAV_HEADER_BYTES or head[:4] != b"RIFF" or head[36:40] != b"data":
                raise ValueError("not a PCM WAV file of ours")
            channels, rate = struct.unpack_from("<HI", head, 22)
            size = os.fstat(fh.fileno()).st_size
            block = channels * 2
            data = (size - WAV_HEADER_BYTES) // block * block
            fh.truncate(WAV_HEADER_BYTES + data)
            fh.seek(4)
            fh.write(struct.pack("<I", 36 + data))
            fh.seek(40)
            fh.write(struct.pack("<I", data))
    except (OSError, ValueError, struct.error) as exc:
        log.warning("recording %s cannot be repaired (%s); dropped", part.name, exc)
        with contextlib.suppress(OSError):
            part.unlink()
        return None
    if data == 0:
        with contextlib.suppress(OSError):
            part.unlink()
        return None
    final = part.with_suffix("")  # x.wav.part -> x.wav
    os.replace(part, final)
    return {
        "path": str(final),
        "content_type": "audio/wav",
        "channels": channels,
        "sample_rate": rate,
        "duration_s": round(data / block / rate, 3),
        "bytes": WAV_HEADER_BYTES + data,
        "partial": True,
    }
