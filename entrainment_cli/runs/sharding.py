"""Shards of a study: which examples ``--shard I/N`` runs, the same split on every machine.

An example belongs to shard ``sha256(id) mod N``: the hash of the id string alone, never
Python's ``hash()`` (salted per process), nor the example's position (which depends on what
else was selected). So every machine of a job array, given the same data and options, agrees
on the split without talking to the others, and the N shards together hold each example once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Shard:
    index: int  # I, 0-based
    count: int  # N

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UserError(
                f"--shard {self.index}/{self.count}: the shard number must satisfy "
                "0 <= I < N (shards are numbered from 0), e.g. --shard 0/4 .. 3/4"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, example_id: object) -> bool:
        return shard_of(example_id, self.count) == self.index

    def select(self, ids: Sequence[object]) -> list[int]:
        """Positions in ``ids`` of the examples of this shard, in their order."""
        return [i for i, example_id in enumerate(ids) if self.holds(example_id)]

    def record(self) -> dict[str, int]:
        """The shard as the manifest records it."""
        return {"index": self.index, "count": self.count}


def shard_of(example_id: object, count: int) -> int:
    """The shard (0..count-1) of an example id, from SHA-256 of its string form."""
    digest = hashlib.sha256(str(example_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(spec: str | None) -> Shard | None:
    """``--shard I/N`` (``None``: the whole study, no sharding)."""
    if spec is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if match is None:
        raise UserError(
            f"--shard '{spec}' is not I/N; give the shard number and the number of shards, "
            "e.g. --shard 0/4 (shards 0/4 .. 3/4 together run the whole study)"
        )
    return Shard(int(match[1]), int(match[2]))
