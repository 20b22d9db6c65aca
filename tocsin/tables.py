"""Tables the detectors need that are slow to compute, cached in the cache folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from detectors.seismic import DEPTHS_KM, DISTANCES_DEG, TravelTimes, compute_iasp91_p, use_table


def prime_travel_times(cache_dir: Path) -> TravelTimes:
    """Load the iasp91 first-P table from ``cache_dir`` (computing and saving it the first
    time) and hand it to :mod:`detectors.seismic`."""
    path = cache_dir / "tables" / "iasp91_first_p.npz"
    table = None
    if path.is_file():
        try:
            with np.load(path) as f:
                cached = TravelTimes.from_arrays(f)
        except (OSError, ValueError, KeyError) as exc:  # a damaged cache file: recompute
            print(f"{path}: unreadable ({exc}); recomputing", file=sys.stderr)
        else:
            if (np.array_equal(cached.distances, DISTANCES_DEG)
                    and np.array_equal(cached.depths, DEPTHS_KM)):
                table = cached
    if table is None:
        print(f"computing the iasp91 travel-time table once (about 10 s) into {path}",
              file=sys.stderr)
        table = compute_iasp91_p()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # concurrent first runs
        np.savez(tmp, distances=table.distances, depths=table.depths, seconds=table.seconds)
        tmp.replace(path)
    use_table(table)
    return table
