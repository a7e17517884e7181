"""Shared carrier logic: mark bookkeeping and the per-connection flood guard (virtual clock)."""

from __future__ import annotations

from runtime.carriers.common import FloodGuard, MarkTracker, parse_l16_rate


def test_marks_echoed_after_a_clear_count_as_cleared_not_played() -> None:
    marks = MarkTracker()
    marks.sent("turn-1-end")
    assert marks.echoed("turn-1-end") == "played"
    marks.sent("turn-2-end")
    marks.sent("turn-2-x")
    marks.clear()
    assert marks.pending == 0
    assert marks.echoed("turn-2-x") == "cleared"
    assert marks.echoed("turn-2-end") == "cleared"
    assert marks.echoed("turn-2-end") == "unknown"  # echoed twice
    assert marks.echoed("never-sent") == "unknown"
    marks.sent("a")
    marks.drop_pending()
    assert marks.echoed("a") == "unknown"


def test_flood_guard_admits_the_carriers_rate_and_bounds_a_flood() -> None:
    guard = FloodGuard(rate=100, burst=10, tolerance=50)
    now = 0.0
    # 50 messages a second (one 20 ms frame each) for ten seconds: all admitted
    for _ in range(500):
        now += 0.02
        assert guard.admit(200, now)
    # a burst: the bucket admits its depth, then drops
    admitted = sum(guard.admit(200, now) for _ in range(100))
    assert admitted == 9 and guard.dropped == 91 and guard.flooding  # one token was spent
    # after a pause the connection is welcome again
    now += 1.0
    assert guard.admit(200, now) and not guard.flooding


def test_flood_guard_counts_bytes_too() -> None:
    guard = FloodGuard(rate=1000, burst=1000, byte_rate=1000, byte_burst=4000, tolerance=3)
    assert guard.admit(4000, 0.0)
    assert not guard.admit(10, 0.0)
    assert guard.admit(10, 0.5)


def test_l16_content_type() -> None:
    assert parse_l16_rate("audio/l16;rate=16000") == 16000
    assert parse_l16_rate("audio/L16; rate=8000") == 8000
    assert parse_l16_rate("audio/pcmu;rate=8000") is None
    assert parse_l16_rate("audio/l16") is None


def test_a_sustained_flood_is_detected_even_though_the_bucket_refills() -> None:
    guard = FloodGuard(rate=250, burst=500, tolerance=500)
    now = 0.0
    flagged_at = None
    for i in range(5000):  # 5,000 messages a second
        now += 0.0002
        guard.admit(200, now)
        if guard.flooding and flagged_at is None:
            flagged_at = i
    assert flagged_at is not None and flagged_at < 2000
