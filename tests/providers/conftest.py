"""Shared helpers for the cloud provider tests: key-leak checks and audio builders."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator

import pytest

from providers.base import AudioFormat
from tests.fakes._base import pcm16_to_mulaw, silence_pcm, tone

SECRET = "sk-test-SECRET-d41d8cd98f00b204"


def exception_text(exc: BaseException) -> str:
    """Everything an exception could reveal: str, repr, args, the chained causes."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts += [str(cur), repr(cur), repr(cur.args), repr(vars(cur))]
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, so a key written anywhere in a log would show up."""
    caplog.set_level(logging.DEBUG)
    names = ("websockets", "websockets.client", "httpx", "httpcore", "openai")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield caplog
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def assert_no_secret(caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            assert SECRET not in exception_text(record.exc_info[1])
    for text in texts:
        assert SECRET not in text


def speech(ms: int, fmt: AudioFormat) -> bytes:
    """Audio the fakes count as speech, in ``fmt``."""
    pcm = tone(ms, fmt.sample_rate)
    if fmt.encoding == "mulaw":
        import numpy as np

        return pcm16_to_mulaw(np.frombuffer(pcm, dtype="<i2"))
    return pcm


def quiet(ms: int, fmt: AudioFormat) -> bytes:
    if fmt.encoding == "mulaw":
        return b"\xff" * (fmt.sample_rate * ms // 1000)
    return silence_pcm(ms, fmt.sample_rate)


def frames(audio: bytes, fmt: AudioFormat, ms: int = 20) -> list[bytes]:
    size = fmt.frame_bytes(ms)
    return [audio[i : i + size] for i in range(0, len(audio), size)]
