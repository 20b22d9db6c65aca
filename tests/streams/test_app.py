"""The worker app's helpers that need no broker."""

from __future__ import annotations

import pytest


def test_outputs_wait_for_the_database() -> None:
    """An agent's store call is tried again while the database cannot be reached (its
    input is not committed meanwhile); other errors are not swallowed."""
    import asyncio

    from sqlalchemy.exc import OperationalError

    from streams.app import until_stored

    calls: list[int] = []

    def save() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        return "stored"

    assert asyncio.run(until_stored(save, "x", first_wait=0.01)) == "stored"
    assert len(calls) == 3

    def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(until_stored(broken, "x", first_wait=0.01))
