"""The message queue as plain Python (no Ray inside): partition logs, groups, brokers, persistence.

The contract (``Producer``, ``Consumer``, append and fetch results, typed broker stats) is in
``api``; ``keys`` maps GPUs to partitions and shards; ``routing`` maps partitions to brokers;
``broker`` hosts partitions; ``local`` runs brokers in process. The Ray transport is
``pipeline.runtime.transport``.
"""

from pipeline.queue.api import (
    AppendResult,
    BrokerStats,
    Consumer,
    Fetched,
    FetchResult,
    GroupLag,
    PartitionStats,
    Producer,
    ProducerCheckpoint,
    lag_of,
)
from pipeline.queue.broker import Broker, Persistence
from pipeline.queue.group import Assignment
from pipeline.queue.keys import KeyHasher, order_by_partition
from pipeline.queue.local import LocalQueue
from pipeline.queue.routing import broker_of, merge_results, per_broker, split_for_brokers

__all__ = [
    "AppendResult",
    "Assignment",
    "Broker",
    "BrokerStats",
    "Consumer",
    "FetchResult",
    "Fetched",
    "GroupLag",
    "KeyHasher",
    "LocalQueue",
    "PartitionStats",
    "Persistence",
    "Producer",
    "ProducerCheckpoint",
    "broker_of",
    "lag_of",
    "merge_results",
    "order_by_partition",
    "per_broker",
    "split_for_brokers",
]
