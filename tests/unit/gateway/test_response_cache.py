"""ResponseCache: the replica's copy in front of a shared cache, bounded by the shared entry's TTL."""

from __future__ import annotations

from pipeline.gateway.cache import ResponseCache


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class DictCache:
    """A shared cache in a dictionary (expiry by the caller's clock)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.values: dict[str, tuple[float, bytes]] = {}
        self.gets = 0

    def get(self, key: str) -> bytes | None:
        self.gets += 1
        entry = self.values.get(key)
        return entry[1] if entry is not None and entry[0] > self.clock() else None

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self.values[key] = (self.clock() + ttl_s, value)


def test_a_stored_body_is_answered_from_memory_until_its_ttl() -> None:
    clock = Clock()
    shared = DictCache(clock)
    cache = ResponseCache(shared, clock=clock)
    cache.set("k", b"body", 5.0)
    assert cache.lookup("k") == b"body" and cache.get("k") == b"body"
    assert shared.gets == 0 and cache.local_hits == 2
    clock.now += 5.0
    assert cache.lookup("k") is None and cache.get("k") is None
    assert cache.misses == 1


def test_a_body_from_the_shared_cache_expires_here_when_it_does_there() -> None:
    clock = Clock()
    shared = DictCache(clock)
    ResponseCache(shared, clock=clock).set("k", b"body", 5.0)  # another replica
    clock.now += 4.0
    other = ResponseCache(shared, clock=clock)
    assert other.lookup("k") is None and other.get("k") == b"body" and shared.gets == 1
    assert other.lookup("k") == b"body"
    clock.now += 1.0
    assert other.lookup("k") is None, "the copy outlived the shared entry"


def test_without_a_shared_cache_the_replica_still_keeps_bodies() -> None:
    clock = Clock()
    cache = ResponseCache(None, clock=clock)
    assert cache.get("k") is None
    cache.set("k", b"body", 1.0)
    assert cache.get("k") == b"body" and (cache.hits, cache.misses, cache.errors) == (1, 1, 0)


def test_memory_is_bounded() -> None:
    clock = Clock()
    cache = ResponseCache(None, max_entries=3, clock=clock)
    for i in range(10):
        cache.set(f"k{i}", b"x", 1.0)
    assert len(cache._local) <= 3
    assert cache.lookup("k9") == b"x"
