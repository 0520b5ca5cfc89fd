"""The supervisor's bookkeeping and start-up rules, without Ray: restarts, re-creations, backoff, waiting out."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError, DatabaseUnavailable
from pipeline.runtime.supervision import Supervision
from pipeline.runtime.supervisor import _wait_out


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_new_pid_is_a_restart_that_ray_made_and_is_counted_once() -> None:
    s = Supervision(Clock())
    assert not s.answered("collector-0", "collector", 10)  # first sight: nothing to count
    assert not s.answered("collector-0", "collector", 10)
    assert s.answered("collector-0", "collector", 11)
    assert not s.answered("collector-0", "collector", 11)
    health = s.report()["collector-0"]
    assert health["restarts"] == 1 and health["state"] == "running" and health["pid"] == 11
    assert health["reason"] == "restarted by Ray (pid 10 -> 11)"


def test_an_actor_gone_for_good_is_recreated_with_doubling_backoff_up_to_the_cap() -> None:
    clock = Clock()
    s = Supervision(clock, base_backoff_s=1.0, max_backoff_s=4.0)
    s.answered("streamer-0", "streamer", 7)
    waits = []
    for _ in range(5):
        assert s.gone("streamer-0", "streamer", "node lost")  # its backoff has passed: re-create now
        s.recreated("streamer-0", "streamer")
        start = clock.now
        while not s.gone("streamer-0", "streamer", "constructor failed"):
            clock.now += 0.5
        waits.append(clock.now - start)
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    health = s.report()["streamer-0"]
    assert health["recreated"] == 5 and health["state"] == "gone" and health["reason"] == "constructor failed"


def test_an_actor_that_answers_again_resets_its_backoff() -> None:
    clock = Clock()
    s = Supervision(clock, base_backoff_s=1.0, max_backoff_s=60.0)
    for _ in range(3):
        s.gone("broker-0", "broker", "died")
        s.recreated("broker-0", "broker")
        clock.now += 100
    s.answered("broker-0", "broker", 42)
    s.gone("broker-0", "broker", "died again")
    s.recreated("broker-0", "broker")
    clock.now += 1.0
    assert s.gone("broker-0", "broker", "died again")  # 1 s, not 8 s: the failures before were forgiven


def test_silent_is_waited_for_never_recreated_and_forget_drops_a_retired_actor() -> None:
    s = Supervision(Clock())
    s.silent("collector-1", "collector", restarting=True)
    assert s.report()["collector-1"]["state"] == "restarting"
    s.silent("collector-1", "collector", restarting=False)
    assert s.report()["collector-1"]["state"] == "unresponsive" and s.report()["collector-1"]["recreated"] == 0
    s.forget("collector-1")
    assert "collector-1" not in s.report()


def test_the_supervisor_start_waits_out_a_database_outage_with_capped_backoff() -> None:
    slept: list[float] = []
    attempts = iter([DatabaseUnavailable("down")] * 7 + [None])

    def step() -> str:
        exc = next(attempts)
        if exc is not None:
            raise exc
        return "loaded"

    assert _wait_out("read the stored deployment", step, sleep=slept.append, max_delay_s=4.0) == "loaded"
    assert slept == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_the_supervisor_start_does_not_retry_a_configuration_error() -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        raise ConfigError("queue.partitions (1) must be at least the largest number of collectors (2)")

    with pytest.raises(ConfigError):
        _wait_out("start the fleet", step, sleep=lambda _: None)
    assert calls == [1]
