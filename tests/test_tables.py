"""The travel-time table cache: computed once, then loaded; a damaged file is recomputed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tocsin.tables as tables
from detectors.seismic import DEPTHS_KM, DISTANCES_DEG, TravelTimes, iasp91_p, use_table


def test_cache_is_written_once_read_after_and_rebuilt_when_damaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = iasp91_p()
    calls = []

    def fake() -> TravelTimes:
        calls.append(1)
        return TravelTimes(DISTANCES_DEG, DEPTHS_KM,
                           np.full((len(DEPTHS_KM), len(DISTANCES_DEG)), float(len(calls))))

    monkeypatch.setattr(tables, "compute_iasp91_p", fake)
    try:
        first = tables.prime_travel_times(tmp_path)
        again = tables.prime_travel_times(tmp_path)
        assert len(calls) == 1 and np.array_equal(first.seconds, again.seconds)
        assert iasp91_p() is again  # handed to the locator
        (tmp_path / "tables" / "iasp91_first_p.npz").write_text("damaged")
        rebuilt = tables.prime_travel_times(tmp_path)
        assert len(calls) == 2 and float(rebuilt.seconds[0, 0]) == 2.0
        assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["iasp91_first_p.npz"]
    finally:
        use_table(real)
