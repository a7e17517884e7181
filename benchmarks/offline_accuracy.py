"""Word errors of the offline recogniser (pocketsphinx), with its dither on and off.

Why: callers' streams carry digital silence (runs of exact zeros: a WebSocket client's
padding, μ-law silence, a muted microphone), and pocketsphinx's features and cepstral mean
go wrong on it; the host adds a fixed half-bit noise pattern to every utterance
(``providers/offline/_sphinx_host.py``). This measures what that does to the words, on
espeak-ng sentences decoded the way the pipeline feeds them: the pre-roll's silence first
(three lengths), 60 ms chunks, ``finalize()`` after 200 ms of trailing silence; each
sentence both as the process's first utterance (no cepstral mean known yet) and after
the one before it.

    python -m benchmarks.offline_accuracy [--sentences 30]

Speech comes from the espeak-ng CLI and sox (scripts/setup/apt.sh), without sox's
random dither so that every run decodes the same audio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from providers.offline import _sphinx_host as host_wire

SENTENCES = (
    "what time does the store open tomorrow",
    "where can i find the address",
    "i would like to book a table for two",
    "thank you goodbye",
    "can you tell me your opening hours",
    "what are your opening hours tomorrow",
    "do you deliver on sunday",
    "what is the price of the large pizza",
    "i need to change my appointment",
    "can i speak to a manager please",
    "my order has not arrived yet",
    "how much does the delivery cost",
    "is there parking near the store",
    "i want to cancel my reservation",
    "what is your phone number",
    "are you open on the weekend",
    "i would like to pay by card",
    "please call me back later",
    "where are you located",
    "how long will it take",
    "can you repeat that please",
    "i have a question about my bill",
    "do you have any tables free tonight",
    "what time do you close today",
    "i lost my receipt",
    "the food was cold",
    "can i order for pick up",
    "is the kitchen still open",
    "yes that is right",
    "no thank you",
)
LEAD_IN_MS = (40, 100, 200)
TRAIL_MS = 200
CHUNK_BYTES = 1920  # 60 ms of 16 kHz pcm16, the pipeline's STT send


def synthesize(text: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text],
                       check=True, capture_output=True)
        return subprocess.run(
            ["sox", str(wav), "-D", "-r", "16000", "-c", "1", "-b", "16",
             "-e", "signed-integer", "-t", "raw", "-"],
            check=True, capture_output=True,
        ).stdout


def word_errors(reference: str, hypothesis: str) -> int:
    """Levenshtein distance over words (substitutions + insertions + deletions)."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


class Decoder:
    """The decoding host's logic in this process, driven through its wire ops."""

    def __init__(self, dither: bool) -> None:
        self.host = host_wire._Host({"dither": dither}, 200)
        self._ids = 0

    def decode(self, pcm: bytes, lead_in_ms: int, *, fresh: bool) -> str:
        if fresh:
            self.host._recent_cmn = None  # as if this were the process's first utterance
        self._ids += 1
        sid = self._ids
        self.host.handle(host_wire.OP_OPEN, sid, b"")
        data = bytes(lead_in_ms * 32) + pcm + bytes(TRAIL_MS * 32)
        for i in range(0, len(data), CHUNK_BYTES):
            self.host.handle(host_wire.OP_AUDIO, sid, data[i : i + CHUNK_BYTES])
        reply = self.host.handle(host_wire.OP_FINALIZE, sid, b"")
        self.host.handle(host_wire.OP_CLOSE, sid, b"")
        assert reply is not None
        return str(json.loads(host_wire.unpack(reply)[2])["text"])


def run(sentences: tuple[str, ...]) -> dict[str, dict[str, float]]:
    audio = {s: synthesize(s) for s in sentences}
    words = sum(len(s.split()) for s in sentences) * len(LEAD_IN_MS)
    results: dict[str, dict[str, float]] = {}
    for dither in (False, True):
        decoder = Decoder(dither)
        row: dict[str, float] = {}
        for fresh in (True, False):
            errors = sum(
                word_errors(s, decoder.decode(audio[s], lead, fresh=fresh))
                for lead in LEAD_IN_MS
                for s in sentences
            )
            row["first utterance" if fresh else "after another"] = 100.0 * errors / words
        results["dither on" if dither else "dither off (baseline)"] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=len(SENTENCES))
    args = parser.parse_args()
    sentences = SENTENCES[: args.sentences]
    results = run(sentences)
    print(f"word error rate, {len(sentences)} sentences x lead-in {LEAD_IN_MS} ms")
    print(f"{'':24}{'first utterance':>18}{'after another':>16}")
    for name, row in results.items():
        print(f"{name:24}{row['first utterance']:17.1f}%{row['after another']:15.1f}%")


if __name__ == "__main__":
    main()
