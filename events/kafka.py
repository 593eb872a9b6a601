"""Kafka helpers over aiokafka: topics, producer settings, the partitioner, reachability.

Measured against the embedded Tansu broker (DESIGN.md §2):
- asking for metadata of an unknown topic creates it with 4 partitions, so topics are
  listed (which creates nothing) and then created explicitly with the configured count;
- `CreatePartitions` is not supported, `DeleteTopics` is: a topic created with the wrong
  count can only be deleted and created again;
- `InitProducerId` fails, so producers are not idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.protocol.metadata import MetadataRequest

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC_OR_PARTITION = 3


class TopicMismatch(KafkaError):  # type: ignore[misc]
    """A topic exists with another partition count than the configured one."""

    retriable = True

    def __init__(self, topic: str, actual: int, wanted: int) -> None:
        super().__init__(f"topic {topic!r} has {actual} partitions, {wanted} are configured")
        self.topic = topic
        self.actual = actual
        self.wanted = wanted


def partition_for(key: bytes, partitions: int) -> int:
    """The partition aiokafka's default partitioner picks for `key` (murmur2, as in Java)."""
    return _partition(key, partitions)


@lru_cache(maxsize=65_536)
def _partition(key: bytes, partitions: int) -> int:
    # Identical to aiokafka.partitioner.DefaultPartitioner with all partitions available.
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def make_producer(bootstrap: str, **overrides: Any) -> AIOKafkaProducer:
    """An unstarted producer: acks from all in-sync replicas, no idempotence, large batches."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        # Tansu answers InitProducerId with an error; ordering per partition still holds
        # because aiokafka keeps one batch in flight per partition.
        "enable_idempotence": False,
        "linger_ms": 2,
        "max_batch_size": 512 * 1024,
        "max_request_size": 8 * 1024 * 1024,
        "request_timeout_ms": 10_000,
        "retry_backoff_ms": 100,
        "client_id": "partnerhub",
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int,
    replication: int = 1,
    *,
    recreate_mismatched: bool = False,
    timeout: float = 10.0,
) -> set[str]:
    """Make sure every topic exists with `partitions` partitions; return those created.

    Existing topics are found by listing (a metadata request naming a missing topic
    would auto-create it with the broker's default count). A topic with another count
    raises `TopicMismatch`, unless `recreate_mismatched` allows deleting and creating it
    again (only for a broker whose data is disposable, as the embedded one's is).
    """
    wanted = sorted(set(topics))
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    created: set[str] = set()
    await asyncio.wait_for(admin.start(), timeout)
    try:
        for _ in range(5):
            existing = await _partition_counts(admin)
            missing = [t for t in wanted if t not in existing]
            mismatched = [t for t in wanted if t in existing and existing[t] != partitions]
            if mismatched and not recreate_mismatched:
                topic = mismatched[0]
                raise TopicMismatch(topic, existing[topic], partitions)
            if mismatched:
                log.warning(
                    "recreating topics with a wrong partition count",
                    extra={"topics": mismatched, "partitions": partitions},
                )
                await admin.delete_topics(mismatched)
                missing += mismatched
            if not missing:
                return created
            response = await admin.create_topics(
                [NewTopic(t, partitions, replication) for t in missing], timeout_ms=int(timeout * 1000)
            )
            for topic, code, message in _topic_errors(response):
                if code == 0:
                    created.add(topic)
                elif code != _TOPIC_ALREADY_EXISTS:
                    raise KafkaError(f"cannot create topic {topic!r}: error {code} {message or ''}".strip())
            # Loop to verify: a racing client may have auto-created one with a wrong count.
        raise KafkaError(f"topics {wanted} did not settle with {partitions} partitions")
    finally:
        await admin.close()


async def topic_partitions(bootstrap: str, *, timeout: float = 5.0) -> dict[str, int]:
    """Partition count of every topic on the broker (creates nothing)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        return await _partition_counts(admin)
    finally:
        await admin.close()


async def broker_reachable(bootstrap: str, timeout: float = 2.0) -> bool:
    """Whether a broker at `bootstrap` answers a Kafka metadata request within `timeout`."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    conn = None
    try:
        async with asyncio.timeout(timeout):
            conn = await create_conn(host, int(port), request_timeout_ms=int(timeout * 1000))
            # An empty topic list asks for brokers only (and creates nothing).
            await conn.send(MetadataRequest([], allow_auto_topic_creation=False))
        return True
    except (OSError, TimeoutError, KafkaError, ValueError):
        return False
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    counts: dict[str, int] = {}
    for topic in await admin.describe_topics(None):
        if topic.get("error_code", 0) == _UNKNOWN_TOPIC_OR_PARTITION:
            continue
        counts[str(topic["topic"])] = len(topic.get("partitions") or [])
    return counts


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    errors: list[tuple[str, int, str | None]] = []
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        errors.append((str(topic), int(code), message))
    return errors
