"""Readers that yield Arrow batches of samples (and the rejects found beside them).

The contract (``Source``, ``Shard``, ``SourceBatch``) lives in ``base``; ``factory`` builds the
source a streamer's settings describe; the readers are ``dcgm_csv``, ``synthetic``, ``prometheus``
(dcgm-exporter scrapes) and ``nvml``.
"""

from pipeline.sources.base import Shard, Source, SourceBatch
from pipeline.sources.factory import build_source, source_for

__all__ = ["Shard", "Source", "SourceBatch", "build_source", "source_for"]
