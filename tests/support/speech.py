"""Real speech for tests: espeak-ng (the Debian CLI) synthesizes, sox converts.

Results are cached per process so several tests can share one synthesis.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path


def require_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"tests need {', '.join(missing)}: run scripts/setup/apt.sh")


@functools.lru_cache(maxsize=64)
def speech(
    text: str,
    *,
    rate: int = 16000,
    encoding: str = "signed-integer",
    bits: int = 16,
    voice: str = "en-us",
    wpm: int = 150,
) -> bytes:
    """Raw mono audio of ``text`` (pcm16 LE by default; ``encoding='u-law', bits=8``)."""
    require_tools()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        out = subprocess.run(
            [
                "sox",
                str(wav),
                "-D",  # no random dither: the same text is the same audio in every run
                "-r",
                str(rate),
                "-c",
                "1",
                "-b",
                str(bits),
                "-e",
                encoding,
                "-t",
                "raw",
                "-",
            ],
            check=True,
            capture_output=True,
        )
        return out.stdout


def wav_file(text: str, path: Path, *, rate: int = 48000, pad_s: float = 0.0) -> Path:
    """A WAV of ``text`` (for Chromium's fake microphone), padded with trailing silence."""
    require_tools()
    raw = path.with_suffix(".tmp.wav")
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    args = ["sox", str(raw), "-D", "-r", str(rate), "-c", "1", "-b", "16", str(path)]
    if pad_s:
        args += ["pad", "0", str(pad_s)]
    subprocess.run(args, check=True, capture_output=True)
    raw.unlink()
    return path
