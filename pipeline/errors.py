"""One exception tree for the whole pipeline, with typed fields.

Every error names what it is about in fields a caller can branch on (``exc.param``, ``exc.partition``,
``exc.path``), never by parsing the message. Every exception here survives a ``pickle`` round trip
(Ray ships exceptions between processes): the message is the only positional argument, the fields
are keyword-only with defaults, so ``Exception.__reduce__`` (``cls(*args)`` then ``__dict__``)
rebuilds them exactly. ``tests/unit/test_errors.py`` checks each one.
"""

from __future__ import annotations

__all__ = [
    "BrokerRestarted",
    "ConfigError",
    "DatabaseUnavailable",
    "FencedError",
    "InvalidParameter",
    "NotLeader",
    "OffsetMismatch",
    "OffsetOutOfRange",
    "PipelineError",
    "QueueError",
    "ResourceNotFound",
    "SourceError",
    "StorageError",
]


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(PipelineError):
    """A setting or command-line argument is invalid; ``setting`` names it where one is known."""

    def __init__(
        self, message: str, *, setting: str = "", value: str = "", path: str = "", line: int | None = None
    ) -> None:
        super().__init__(message)
        self.setting = setting
        self.value = value
        self.path = path
        self.line = line


class SourceError(PipelineError):
    """An input cannot be read at all (missing file, unknown header, no GPU).

    ``path`` and ``line`` locate it; ``raw`` keeps the offending text when there is one, so the
    CLI can store it as a reject before it stops.
    """

    def __init__(
        self, message: str, *, path: str = "", line: int | None = None, raw: str | None = None, host: str = ""
    ) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.raw = raw
        self.host = host


class InvalidParameter(PipelineError):
    """A request parameter is invalid; ``param`` names it (the gateway answers 400)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ResourceNotFound(PipelineError):
    """A requested object (GPU, host, actor) does not exist; ``kind`` and ``name`` say which."""

    def __init__(self, message: str, *, kind: str = "", name: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name


class StorageError(PipelineError):
    """The database refused or failed an operation."""


class DatabaseUnavailable(StorageError):
    """The database cannot be reached (a state to wait out, not a reason to die)."""


class QueueError(PipelineError):
    """The message queue refused an operation; ``partition`` and ``path`` locate it where known."""

    def __init__(
        self, message: str, *, partition: int | None = None, path: str = "", position: int | None = None
    ) -> None:
        super().__init__(message)
        self.partition = partition
        self.path = path
        self.position = position


class FencedError(QueueError):
    """A consumer acted with a generation older than the group's current one (it must rejoin)."""

    def __init__(
        self,
        message: str,
        *,
        group: str = "",
        member: str = "",
        generation: int = 0,
        current: int | None = None,
        partition: int | None = None,
    ) -> None:
        super().__init__(message, partition=partition)
        self.group = group
        self.member = member
        self.generation = generation
        self.current = current


class OffsetMismatch(QueueError):
    """A commit's first offset is not the stored next offset (a duplicate or a gap)."""

    def __init__(self, message: str, *, partition: int | None = None, stored: int = 0, first: int = 0) -> None:
        super().__init__(message, partition=partition)
        self.stored = stored
        self.first = first


class OffsetOutOfRange(QueueError):
    """A fetch asked for an offset outside the retained range ``[start, end]`` of a partition."""

    def __init__(
        self, message: str, *, partition: int | None = None, offset: int = 0, start: int = 0, end: int = 0
    ) -> None:
        super().__init__(message, partition=partition)
        self.offset = offset
        self.start = start
        self.end = end


class BrokerRestarted(QueueError):
    """An append expected an earlier incarnation of its broker: the broker restarted since.

    Its memory (and, with an empty or no queue dir, its log) may have lost messages it had
    acknowledged; the producer re-sends what it still retains before anything new (``incarnation``
    is the broker's new one: send with it from now on).
    """

    def __init__(self, message: str, *, broker: int = 0, incarnation: str = "", partition: int | None = None) -> None:
        super().__init__(message, partition=partition)
        self.broker = broker
        self.incarnation = incarnation


class NotLeader(QueueError):
    """A call reached a replica that does not lead ``partition`` (any more): ask the leader.

    ``leader`` is the broker this replica follows, when it knows one; ``epoch`` the epoch it knows.
    """

    def __init__(
        self, message: str, *, partition: int | None = None, leader: int | None = None, epoch: int = 0
    ) -> None:
        super().__init__(message, partition=partition)
        self.leader = leader
        self.epoch = epoch
