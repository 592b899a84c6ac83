"""The positions port as the tasks see it: the domain's store, built once by its provider."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.domain.ports import Lease, Positions
from tidings.domain.positions import FAILED, RETRYING, LeaseLostError

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

PositionStore = Positions

__all__ = ["FAILED", "RETRYING", "Lease", "LeaseLostError", "PositionStore", "position_store"]


def position_store(domain: Domain) -> Positions:
    """The positions of the domain's default database (where the outbox and inbox live too)."""
    return domain.storage.positions
