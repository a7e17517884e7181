"""Cuts a streamed LLM reply into pieces a TTS engine can speak as soon as they are ready.

TTS engines need whole phrases to get the prosody right, but waiting for the full reply
would add the LLM's whole generation time to the latency. The chunker emits a sentence as
soon as the next one has begun, and the first piece of a reply even earlier, at the first
clause boundary (comma, semicolon, colon, dash) once it has a few words, because the time
to the first spoken word is what the caller notices.

A boundary is only trusted when the text after it is known: "3." may become "3.5", and
"Dr." is followed by a name, so a full stop is confirmed by the whitespace and the first
character after it. Chunks are only ever cut at whitespace and are stripped, so joining
them with spaces gives back the reply (whitespace-normalised) however it was streamed.
"""

from __future__ import annotations

import re

__all__ = ["ABBREVIATIONS", "SentenceChunker"]

#: Lower-case words that end with a full stop without ending a sentence.
ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs",
        "e.g", "i.e", "cf", "approx", "appt", "apt", "dept", "ave", "blvd",
        "jan", "feb", "apr", "jun", "jul", "aug", "sept", "oct", "nov",
        "tues", "thurs",
    }
)  # fmt: skip
# Dotted words that often do end a sentence ("We open at 9 a.m. See you then.").
_MAY_END = frozenset({"a.m", "p.m"})

_TERMINALS = ".!?…"
_CLOSERS = "\"')]}»”’"
# a run of sentence-ending punctuation with its closing quotes/brackets, then whitespace
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]}»”’]*(?=\s)")
# a clause boundary: , ; : or a dash, then whitespace (never inside "1,000" or "9:30")
_CLAUSE_END = re.compile(r"(?:[,;:]|\s--?|[—–])[\"')\]}»”’]*(?=\s)")
_NEWLINE = re.compile(r"\n")
_DOTTED = re.compile(r"^(?:[a-z]\.)+[a-z]$")  # u.s, e.g, j.r.r
_WORD_BEFORE = re.compile(r"(\S+)$")
_LEADING_PUNCT = "\"'([{«“‘"


class SentenceChunker:
    """Stateful splitter for one reply: ``push`` deltas, then ``flush`` the rest.

    ``first_min_words``: words the first chunk needs before it may end at a clause boundary.
    ``max_chars``: a chunk longer than this is cut at its last space (a single word longer
    than that is never cut, it has no place to be cut).
    """

    def __init__(self, *, first_min_words: int = 4, max_chars: int = 250) -> None:
        if first_min_words < 1:
            raise ValueError(f"first_min_words must be >= 1, got {first_min_words}")
        if max_chars < 10:
            raise ValueError(f"max_chars must be >= 10, got {max_chars}")
        self.first_min_words = first_min_words
        self.max_chars = max_chars
        self._buf = ""
        self._emitted = 0

    def push(self, text: str) -> list[str]:
        """Add a piece of the reply; return the chunks it completed."""
        if not text:
            return []
        self._buf += text
        return self._drain()

    def flush(self) -> str | None:
        """The end of the reply: what is left (None if only whitespace). Resets the chunker."""
        rest = self._buf.strip()
        self.reset()
        return rest or None

    def reset(self) -> None:
        """Start a new reply (its first chunk may again end early)."""
        self._buf = ""
        self._emitted = 0

    # ------------------------------------------------------------------ internals

    def _drain(self) -> list[str]:
        chunks: list[str] = []
        while True:
            self._buf = self._buf.lstrip()
            cut = self._next_cut()
            if cut is None:
                return chunks
            chunk = self._buf[:cut].strip()
            self._buf = self._buf[cut:]
            if chunk:
                chunks.append(chunk)
                self._emitted += 1

    def _next_cut(self) -> int | None:
        """Index where the next chunk ends, or None until more text is needed."""
        text = self._buf
        limit = self.max_chars
        cut = self._boundary(text)
        if cut is not None and cut <= limit:
            return cut
        if cut is None and len(text) <= limit:
            return None
        # too long without a boundary: cut at the last clause boundary in the second half
        # of the allowed length, else at the last whitespace that fits
        clause = None
        for match in _CLAUSE_END.finditer(text, 0, limit + 1):
            if match.end() <= limit:
                clause = match.end()
        if clause is not None and clause >= limit // 2:
            return clause
        for i in range(min(limit, len(text) - 1), 0, -1):
            if text[i].isspace():
                return i
        # one enormous word: cut at its end once it is known (or at a later boundary)
        for i in range(limit + 1, len(text)):
            if text[i].isspace():
                return i if cut is None or i < cut else cut
        return cut

    def _boundary(self, text: str) -> int | None:
        """The earliest confirmed boundary: a sentence end or line break (always), or for
        the first chunk of a reply a clause boundary after enough words."""
        best: int | None = None
        for match in _SENTENCE_END.finditer(text):
            end = match.end()
            following = _next_visible(text, end)
            if following is None:
                break  # not confirmed yet
            if self._is_sentence_end(text, match.start(), end, following):
                best = end
                break
        for match in _NEWLINE.finditer(text, 0, best if best is not None else len(text)):
            if text[: match.start()].strip() and _next_visible(text, match.end()) is not None:
                best = match.start()
            break
        if self._emitted == 0:
            for match in _CLAUSE_END.finditer(text, 0, best if best is not None else len(text)):
                end = match.end()
                if _next_visible(text, end) is None:
                    break
                if len(text[:end].split()) >= self.first_min_words:
                    return end
        return best

    @staticmethod
    def _is_sentence_end(text: str, start: int, end: int, following: str) -> bool:
        punct = text[start:end].rstrip(_CLOSERS)
        if punct != ".":
            return True  # ! ? … ... and combinations always end a sentence
        if following.islower() or following.isdigit():
            return False  # "approx. 5", "etc. and", "vs. them"
        found = _WORD_BEFORE.search(text, 0, start)
        word = found.group(1).lstrip(_LEADING_PUNCT) if found else ""
        lower = word.lower()
        if lower in _MAY_END:
            return True
        if lower in ABBREVIATIONS or _DOTTED.match(lower):
            return False
        if len(word) == 1 and word.isupper():
            return False  # an initial: "J. Smith"
        if word.isdigit() and not text[: start - len(word)].strip():
            return False  # a list number at the start of a chunk: "1. First"
        return True


def _next_visible(text: str, pos: int) -> str | None:
    """The first non-whitespace character at or after ``pos`` (None if not received)."""
    for i in range(pos, len(text)):
        if not text[i].isspace():
            return text[i]
    return None
