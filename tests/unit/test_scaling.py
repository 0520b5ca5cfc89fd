"""The scaling policy with an injected clock: windows, rates, bounds, pins, no flapping."""

from __future__ import annotations

import pytest

from pipeline.scaling import Autoscaler, ScalePolicy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scaler(**policy: float) -> tuple[Autoscaler, Clock]:
    clock = Clock()
    return Autoscaler("collector", ScalePolicy(**policy), clock), clock  # type: ignore[arg-type]


def run(a: Autoscaler, clock: Clock, current: int, signal: float, seconds: float, step: float = 5.0) -> int:
    """Feed a constant signal for ``seconds``, applying each decision; returns the final count."""
    end = clock.now + seconds
    while clock.now < end:
        current = a.decide(current, signal).desired
        clock.now += step
    return current


def test_a_burst_must_last_the_up_window_before_scaling_up() -> None:
    a, clock = scaler(min=1, max=10, target=1000)
    assert a.decide(1, 50_000).desired == 1  # first sight of a burst: wait
    clock.now = 30
    assert a.decide(1, 50_000).desired == 1  # still inside the 60 s window
    clock.now = 61
    d = a.decide(1, 50_000)
    assert d.desired == 2 and d.direction == "up"  # +50 % of 1, at least one
    assert "up-rate limit" in d.reason


def test_up_rate_is_at_most_fifty_percent_per_period() -> None:
    a, clock = scaler(min=1, max=100, target=1000)
    counts = []
    current = 4
    for _ in range(40):
        d = a.decide(current, 10_000_000)
        counts.append(d.desired)
        current = d.desired
        clock.now += 5
    # within any 60 s the count grows by at most 50 % of where it was 60 s before
    for i in range(12, len(counts)):
        assert counts[i] <= max(counts[i - 12] + 1, -(-counts[i - 12] * 3 // 2))
    assert counts[-1] > 4


def test_a_short_spike_during_the_window_does_not_scale_up() -> None:
    a, clock = scaler(min=1, max=10, target=1000)
    current = run(a, clock, 2, 1500, 120)  # steady: wants 2
    assert current == 2
    a.decide(current, 50_000)  # one spike
    clock.now += 5
    assert run(a, clock, current, 1500, 120) == 2


def test_scale_down_waits_for_low_lag_over_the_down_window() -> None:
    a, clock = scaler(min=2, max=10, target=1000)
    current = 8
    current = run(a, clock, current, 8000, 60)
    assert current == 8
    for _ in range(59):  # 295 s of low lag: not yet
        current = a.decide(current, 0).desired
        clock.now += 5
    assert current == 8
    clock.now += 10
    d = a.decide(current, 0)
    assert d.desired == 6 and d.direction == "down"  # -25 % of 8


def test_down_rate_is_at_most_twenty_five_percent_per_period_and_never_below_min() -> None:
    a, clock = scaler(min=2, max=10, target=1000, down_stabilization_s=10, up_stabilization_s=10)
    counts = []
    current = 10
    for _ in range(200):
        d = a.decide(current, 0)
        counts.append(d.desired)
        current = d.desired
        clock.now += 5
    assert counts[-1] == 2 and min(counts) == 2
    for i in range(12, len(counts)):
        assert counts[i] >= min(counts[i - 12] - 1, counts[i - 12] * 3 // 4)


def test_never_above_max() -> None:
    a, clock = scaler(min=1, max=3, target=1)
    assert run(a, clock, 1, 1e9, 600) == 3


def test_no_flapping_on_an_oscillating_signal() -> None:
    a, clock = scaler(min=1, max=10, target=1000)
    current = 3
    changes = 0
    for i in range(240):  # 20 minutes of lag swinging between 1,000 and 5,000 every 10 s
        d = a.decide(current, 5000 if (i // 2) % 2 else 1000)
        changes += d.desired != current
        current = d.desired
        clock.now += 5
    assert changes == 0  # the up window always holds a low sample, the down window a high one


def test_pins_override_the_policy() -> None:
    a, clock = scaler(min=1, max=10, target=1000)
    a.pin(7)
    d = a.decide(2, 0)
    assert (d.desired, d.direction) == (7, "up") and "pinned" in d.reason
    a.pin(None)
    clock.now += 1000
    assert a.decide(7, 7000).desired == 7


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="min <= max"):
        ScalePolicy(min=5, max=2)
    with pytest.raises(ValueError, match="positive"):
        ScalePolicy(target=0)
    a, _ = scaler()
    with pytest.raises(ValueError, match="negative"):
        a.pin(-1)


def test_windows_are_honoured_whatever_the_tick_period() -> None:
    """Ticks that do not divide the window still let the policy act once the window is covered."""
    a, clock = scaler(min=1, max=10, target=1000, up_stabilization_s=0.6, down_stabilization_s=1.5, period_s=0.6)
    current = run(a, clock, 1, 50_000, 3.0, step=0.3)
    assert current >= 3
    current = run(a, clock, current, 0, 6.0, step=0.3)
    assert current == 1
