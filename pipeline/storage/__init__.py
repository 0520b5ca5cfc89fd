"""Everything that talks to PostgreSQL/TimescaleDB (the only package that imports psycopg).

The sink contract is ``sink``; ``writer`` is the exactly-once COPY sink; ``reader`` answers the
gateway's queries; ``setup`` finds or starts the database and migrates it; ``migrate`` applies
``sql/``; ``time_partitions`` keeps native range partitions on plain PostgreSQL; ``database``
connects; ``copy_format`` encodes binary COPY.
"""

from pipeline.storage.database import Database
from pipeline.storage.setup import Prepared, maintain, prepare
from pipeline.storage.sink import PartitionBatch, Sink, WriteResult

__all__ = ["Database", "PartitionBatch", "Prepared", "Sink", "WriteResult", "maintain", "prepare"]
