"""Elastic scaling: how many collectors and streamers should run (a policy, no Ray inside).

Behaviour follows the seed's HorizontalPodAutoscaler, every number configurable:

* a *recommendation* comes from a signal: collectors from consumer lag (``ceil(lag / target lag per
  collector)``), streamers from their utilisation (``ceil(busy streamers / target utilisation)``);
* scale-up uses the *lowest* recommendation of the up-stabilisation window (60 s): a burst must last
  that long before actors are added; scale-down uses the *highest* recommendation of the
  down-stabilisation window (300 s): lag must stay low that long before actors go;
* each change is rate-limited against the count one period ago: up by at most 50 % per 60 s (at
  least one actor), down by at most 25 % per 60 s (at least one actor);
* the result is clamped to [min, max]; a count pinned at runtime overrides the policy.

``Autoscaler.decide`` is a pure function of the observations it was given and an injected clock, so
windows, rates and bounds are unit-tested without waiting.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Autoscaler", "Decision", "ScalePolicy"]

Direction = Literal["up", "down", "none"]


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """Bounds, target and HPA-like behaviour for one role."""

    min: int = 1
    max: int = 10
    target: float = 1000.0  # signal units per actor (rows of lag per collector; utilisation for streamers)
    up_stabilization_s: float = 60.0
    down_stabilization_s: float = 300.0
    up_percent: float = 50.0
    down_percent: float = 25.0
    period_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.max:
            raise ValueError(f"scaling bounds must satisfy 0 <= min <= max, got min={self.min} max={self.max}")
        if self.target <= 0:
            raise ValueError(f"scaling target must be positive, got {self.target}")


@dataclass(frozen=True, slots=True)
class Decision:
    """One evaluation: the count wanted and why."""

    role: str
    at: float
    current: int
    desired: int
    direction: Direction
    reason: str
    signal: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return asdict(self)


@dataclass(slots=True)
class Autoscaler:
    """Decides the count of one role from a signal, with stabilisation windows and rate limits."""

    role: str
    policy: ScalePolicy
    clock: Callable[[], float]
    pinned: int | None = None
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    _counts: deque[tuple[float, int]] = field(default_factory=deque)
    _started_at: float | None = None

    def pin(self, count: int | None) -> None:
        """Hold the role at ``count`` (None hands it back to the policy)."""
        if count is not None and count < 0:
            raise ValueError(f"{self.role} count must not be negative, got {count}")
        self.pinned = count

    def recommend(self, signal: float) -> int:
        """The raw count the signal asks for."""
        return max(0, math.ceil(signal / self.policy.target))

    def decide(self, current: int, signal: float) -> Decision:
        """The count to run now, given the current count and the latest signal."""
        now = self.clock()
        p = self.policy
        self._counts.append((now, current))
        raw = self.recommend(signal)
        self._recommendations.append((now, raw))
        horizon = max(p.up_stabilization_s, p.down_stabilization_s, p.period_s)
        while self._recommendations and self._recommendations[0][0] < now - horizon:
            self._recommendations.popleft()
        while len(self._counts) > 1 and self._counts[1][0] <= now - p.period_s:
            self._counts.popleft()

        if self.pinned is not None:
            desired = self.pinned
            return self._decision(now, current, desired, f"pinned at {desired} by an operator", signal)

        up_window = [r for t, r in self._recommendations if t >= now - p.up_stabilization_s]
        down_window = [r for t, r in self._recommendations if t >= now - p.down_stabilization_s]
        # Require the window to be covered before acting on it (a fresh controller waits it out).
        if self._started_at is None:
            self._started_at = now
        up_ready = now - self._started_at >= p.up_stabilization_s
        down_ready = now - self._started_at >= p.down_stabilization_s
        base = self._counts[0][1]  # the count one period ago: rate limits apply to change per period
        if raw > current and up_ready:
            target = min(up_window)
            limit = max(base + 1, math.ceil(base * (1 + p.up_percent / 100)))
            desired = max(current, min(target, limit))
            reason = f"signal {signal:.0f} wants {raw}; lowest over {p.up_stabilization_s:.0f}s is {target}"
            if current < desired < target:
                reason += f"; up-rate limit {p.up_percent:.0f}%/{p.period_s:.0f}s allows {desired}"
        elif raw < current and down_ready:
            target = max(down_window)
            limit = min(base - 1, math.floor(base * (1 - p.down_percent / 100)))
            desired = min(current, max(target, limit))
            reason = f"signal {signal:.0f} wants {raw}; highest over {p.down_stabilization_s:.0f}s is {target}"
            if target < desired < current:
                reason += f"; down-rate limit {p.down_percent:.0f}%/{p.period_s:.0f}s allows {desired}"
        else:
            desired = current
            reason = "within target" if raw == current else "stabilising"
        bounded = min(max(desired, p.min), p.max)
        if bounded != desired:
            reason += f"; clamped to [{p.min}, {p.max}]"
        return self._decision(now, current, bounded, reason, signal)

    def _decision(self, now: float, current: int, desired: int, reason: str, signal: float) -> Decision:
        direction: Direction = "up" if desired > current else "down" if desired < current else "none"
        return Decision(self.role, now, current, desired, direction, reason, signal)
