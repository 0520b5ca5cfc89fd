"""One exception tree for the whole pipeline.

Every exception here survives a ``pickle`` round trip: Ray ships exceptions between processes, and
an exception whose ``__init__`` takes other arguments than its message would fail to unpickle.
Subclasses therefore keep the message as their only positional argument and store extra fields as
keyword-only arguments, re-created by ``__reduce__``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "FencedError",
    "NotFound",
    "OffsetMismatch",
    "PipelineError",
    "QueueError",
    "SourceError",
    "StorageError",
    "ValidationError",
]


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.fields))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[PipelineError], message: str, fields: dict[str, Any]) -> PipelineError:
    return cls(message, **fields)


class ConfigError(PipelineError):
    """A setting or command-line argument is invalid; the message names it."""


class SourceError(PipelineError):
    """An input cannot be read at all (missing file, unknown header)."""


class ValidationError(PipelineError):
    """A request parameter is invalid; ``param`` names it."""


class NotFound(PipelineError):
    """A requested object (GPU, actor, partition) does not exist."""


class StorageError(PipelineError):
    """The database refused or failed an operation."""


class DatabaseUnavailable(StorageError):
    """The database cannot be reached."""


class QueueError(PipelineError):
    """The message queue refused an operation."""


class FencedError(QueueError):
    """A consumer acted with a generation older than the group's current one."""


class OffsetMismatch(QueueError):
    """A commit's first offset is not the stored next offset (a duplicate or a gap)."""
