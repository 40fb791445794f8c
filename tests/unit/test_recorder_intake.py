"""The recorder's prefetch count from a byte budget (pure logic)."""

from __future__ import annotations

from consumer.recorder.intake import prefetch_for, should_change


def test_small_events_take_the_most_and_large_ones_fewer() -> None:
    budget = 64 * 1024 * 1024
    assert prefetch_for(budget, None, 1000) == 1000  # nothing seen yet
    assert prefetch_for(budget, 2_000, 1000) == 1000
    assert prefetch_for(budget, 256 * 1024, 1000) == 256
    assert prefetch_for(budget, 10 * budget, 1000) == 1  # one event past the budget still flows


def test_the_count_changes_only_when_it_has_halved_or_doubled_or_reached_the_most() -> None:
    assert not should_change(256, 256, 1000)
    assert not should_change(256, 200, 1000)
    assert not should_change(256, 400, 1000)
    assert should_change(256, 128, 1000)
    assert should_change(256, 512, 1000)
    assert should_change(600, 1000, 1000)
    assert not should_change(1000, 1000, 1000)
