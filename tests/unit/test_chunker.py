"""SentenceChunker: sentence and clause boundaries on streamed text, and its invariants."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipelines.chunker import SentenceChunker


def stream(deltas: list[str], **options: int) -> list[str]:
    chunker = SentenceChunker(**options)
    out: list[str] = []
    for delta in deltas:
        out += chunker.push(delta)
    rest = chunker.flush()
    if rest is not None:
        out.append(rest)
    return out


def by_chars(text: str, **options: int) -> list[str]:
    return stream(list(text), **options)


def normalized(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- examples


def test_sentences_are_emitted_as_soon_as_the_next_one_begins() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Sure. We open at nine") == ["Sure."]
    assert chunker.push(" tomorrow.") == []  # the full stop is not confirmed yet
    assert chunker.push(" Anything") == ["We open at nine tomorrow."]
    assert chunker.push(" else?") == []
    assert chunker.flush() == "Anything else?"
    assert chunker.flush() is None


@pytest.mark.parametrize(
    "text",
    [
        "Dr. Smith will see you now.",
        "Mr. and Mrs. Jones are here.",
        "Bring a snack, e.g. an apple or a pear.",
        "Bring a snack, i.e. something small.",
        "It costs 3.5 dollars.",
        "We open at 9.30 tomorrow.",
        "The office is on Main St. near the park.",
        "J. R. R. Tolkien wrote it.",
        "The U.S. Army was there.",
        "Approx. 5 people came.",
        "See page no. 5 for that.",
        "Apples, pears, etc. are fine.",
        "Version 2.0.1 is out.",
    ],
)
def test_abbreviations_decimals_and_times_do_not_split(text: str) -> None:
    assert by_chars(text + " Next one.") == [text, "Next one."]


@pytest.mark.parametrize(
    ("text", "chunks"),
    [
        ("Really? Yes! Great.", ["Really?", "Yes!", "Great."]),
        ("Well… let me see.", ["Well…", "let me see."]),
        ("Hmm... Let me check.", ["Hmm...", "Let me check."]),
        ("Wait?! What now.", ["Wait?!", "What now."]),
        ('He said "Hi." Then he left.', ['He said "Hi."', "Then he left."]),
        ("(Like this.) And that.", ["(Like this.)", "And that."]),
        ("We open at 9 a.m. See you then.", ["We open at 9 a.m.", "See you then."]),
        ("I said no. Then I left.", ["I said no.", "Then I left."]),
        ("Here:\n1. First\n2. Second", ["Here:", "1. First", "2. Second"]),
        ("Line one\nLine two", ["Line one", "Line two"]),
    ],
)
def test_sentence_ends(text: str, chunks: list[str]) -> None:
    assert by_chars(text) == chunks


def test_first_chunk_ends_early_at_a_clause_boundary() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Sure, I can") == []  # "Sure," has one word: too short
    assert chunker.push(" help you with that, just") == ["Sure, I can help you with that,"]
    # later chunks wait for the whole sentence
    assert chunker.push(" a moment, please. Then") == ["just a moment, please."]


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("One two three four; five six seven.", "One two three four;"),
        ("One two three four: five six seven.", "One two three four:"),
        ("One two three four - five six seven.", "One two three four -"),
        ("One two three four — five six seven.", "One two three four —"),
        ("One two three, four five six seven.", "One two three, four five six seven."),
        ("It is 1,000 or 2,000 dollars, roughly.", "It is 1,000 or 2,000 dollars,"),
        ("Open 9:30 to 17:30 daily, every week.", "Open 9:30 to 17:30 daily,"),
        ("A well-known place — downtown.", "A well-known place —"),
    ],
)
def test_clause_boundaries_for_the_first_chunk(text: str, first: str) -> None:
    assert by_chars(text)[0] == first


def test_first_min_words_is_configurable() -> None:
    assert by_chars("Okay, so here we go.", first_min_words=1)[0] == "Okay,"
    assert by_chars("Okay, so here we go.", first_min_words=6) == ["Okay, so here we go."]


def test_flush_starts_a_new_reply() -> None:
    chunker = SentenceChunker()
    assert chunker.push("One two three four, five. Six") == ["One two three four,", "five."]
    assert chunker.flush() == "Six"
    assert chunker.push("Seven eight nine ten, eleven") == ["Seven eight nine ten,"]


def test_long_text_is_cut_at_the_last_space_that_fits() -> None:
    text = "word " * 120  # 600 characters, no punctuation
    chunks = by_chars(text.strip(), max_chars=50)
    assert all(len(chunk) <= 50 for chunk in chunks)
    assert chunks[0] == " ".join(["word"] * 10)
    assert normalized(" ".join(chunks)) == normalized(text)


def test_long_sentence_prefers_a_clause_boundary_when_cut() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta, iota kappa lambda mu nu xi omicron"
    chunker = SentenceChunker(max_chars=60)
    chunker._emitted = 1  # a later chunk: no early first-chunk split
    out = chunker.push(text + " pi rho.")
    assert out[0] == "alpha beta gamma delta epsilon zeta eta theta,"


def test_a_word_longer_than_the_limit_is_not_cut() -> None:
    url = "https://example.com/" + "a" * 300
    assert by_chars(f"See {url} for details.", max_chars=100) == ["See", url, "for details."]


def test_whitespace_only_input() -> None:
    assert stream(["  ", "\n\t", " "]) == []
    assert SentenceChunker().push("") == []


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="first_min_words"):
        SentenceChunker(first_min_words=0)
    with pytest.raises(ValueError, match="max_chars"):
        SentenceChunker(max_chars=5)


# --------------------------------------------------------------------------- properties

_TOKENS = [
    "Hello", "there", "we", "open", "at", "Dr.", "Mr.", "e.g.", "i.e.", "etc.", "3.5", "9.30",
    "a.m.", "U.S.", "J.", "1.", "no.", "well-known", "1,000", "9:30", "word",
    ".", ",", "!", "?", "…", "...", ";", ":", "-", "—", "–", '"', "'", "(", ")", "”",
    " ", " ", " ", "  ", "\n", "\n\n", "\t", "\u00a0", "\u2028",
]  # fmt: skip

texts = st.one_of(
    st.lists(st.sampled_from(_TOKENS), max_size=120).map("".join),
    st.text(max_size=400),
    st.text(alphabet=st.sampled_from("ab .,!?…;:—-\n\"')1"), max_size=600),
)


@st.composite
def text_and_deltas(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(texts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=40)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=400, deadline=None)
@given(text_and_deltas(), st.sampled_from([20, 60, 250]))
@example(
    (
        "Dr. Smith, e.g. 3.5 at 9.30. Next!",
        ["Dr", ". Smith, e.g", ". 3", ".5 at", " 9.30. N", "ext!"],
    ),
    250,
)
def test_chunks_rebuild_the_text_for_any_split(case: tuple[str, list[str]], max_chars: int) -> None:
    text, deltas = case
    chunks = stream(deltas, max_chars=max_chars)
    assert normalized(" ".join(chunks)) == normalized(text)
    for chunk in chunks:
        assert chunk and chunk == chunk.strip()
        assert len(chunk) <= max_chars or len(chunk.split()) == 1


@settings(max_examples=300, deadline=None)
@given(text_and_deltas())
def test_chunks_do_not_depend_on_how_the_text_was_streamed(case: tuple[str, list[str]]) -> None:
    text, deltas = case
    assert stream(deltas) == stream([text]) == by_chars(text)
