"""Our sea-level detector against the NOAA DART baseline (Mofjeld) on real records.

For every sea-level station of a package both detectors run over the whole record. Each
trigger is classed against the station's tsunami arrival, read from an independent
de-tided reference (first |anomaly| >= max(3 cm, 20 % of its peak) later than
``min_travel_s`` after the origin; 20 % keeps the seismic noise of the first minutes out):

* **false alarm** - a trigger before the origin (the quiet days);
* **early** - after the origin but more than ``early_s`` (20 min) before the reference
  arrival: not the tsunami (seismic shaking of a DART, noise);
* **detection** - the first trigger from ``early_s`` before the arrival on; its delay is
  trigger time - reference arrival (the trigger is when the detector could first claim it;
  negative when it fired on the leading wave before it reached 20 % of the peak).

``python -m replay.baseline_comparison --shared ../shared/data --out FILE.md`` builds the
Tohoku 2011 package from the shared data and writes the table.
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from detectors.base import Detection
from detectors.mofjeld import MofjeldDetector
from detectors.sealevel import TsunamiDetector
from replay.package import ReplayPackage, load_package
from replay.realdata import TOHOKU_ORIGIN, build_tohoku
from replay.run import package_packets
from streams.schemas import ObservationPacket, iso

SEA_LEVEL = ("tide_gauge", "bottom_pressure")


@dataclass(frozen=True)
class Row:
    station_id: str
    detector: str
    arrival: float
    first_trigger: float  # NaN when never detected
    delay_s: float
    false_alarms: int   # before the origin: the quiet days
    early: int          # after the origin, long before the tsunami (seismic shaking, noise)
    triggers: int


def run_detectors(pkg: ReplayPackage) -> dict[tuple[str, str], list[Detection]]:
    infos = {s.station_id: s for s in pkg.station_infos() if s.kind in SEA_LEVEL}
    dets: dict[tuple[str, str], TsunamiDetector | MofjeldDetector] = {}
    for sid, info in infos.items():
        dets[(sid, "tsunami")] = TsunamiDetector(info)
        dets[(sid, "mofjeld")] = MofjeldDetector(info)
    out: dict[tuple[str, str], list[Detection]] = {k: [] for k in dets}
    for pkt in package_packets(pkg, 600.0):
        if not isinstance(pkt, ObservationPacket) or pkt.station_id not in infos:
            continue
        for name in ("tsunami", "mofjeld"):
            for d in dets[(pkt.station_id, name)].feed(pkt.start, pkt.sample_interval,
                                                       pkt.values):
                if not d.extra.get("final"):
                    out[(pkt.station_id, name)].append(d)
    return out


def classify(dets: list[Detection], origin: float, arrival: float, early_s: float,
             ) -> tuple[float, int, int]:
    first = math.nan
    false = early = 0
    for d in sorted(dets, key=lambda d: d.extra.get("trigger", d.declared)):
        trig = float(d.extra.get("trigger", d.declared))
        if trig < origin:
            false += 1
        elif trig < arrival - early_s:
            early += 1
        elif math.isnan(first):
            first = trig
    return first, false, early


def compare(pkg: ReplayPackage, arrivals: dict[str, float], origin: float, *,
            early_s: float = 1200.0) -> list[Row]:
    rows = []
    for (sid, name), dets in sorted(run_detectors(pkg).items()):
        if sid not in arrivals:
            continue
        first, false, early = classify(dets, origin, arrivals[sid], early_s)
        rows.append(Row(sid, name, arrivals[sid], first, first - arrivals[sid], false, early,
                        len(dets)))
    return rows


def reference_arrival(times: np.ndarray, anomaly: np.ndarray, origin: float,
                      min_travel_s: float = 720.0) -> float:
    ok = np.isfinite(anomaly) & (times >= origin + min_travel_s)
    peak = float(np.max(np.abs(anomaly[ok])))
    level = max(0.03, 0.2 * peak)
    hit = np.nonzero(ok & (np.abs(anomaly) >= level))[0]
    return float(times[hit[0]]) if len(hit) else math.nan


def tohoku_arrivals(shared: Path, origin: float) -> dict[str, float]:
    root = shared / "tohoku2011"
    out = {}
    for f in sorted((root / "dart_detided_leveque").glob("*_notide.txt")):
        a = np.loadtxt(f)
        a = a[np.argsort(a[:, 0], kind="stable")]
        out[f.name.split("_")[0]] = reference_arrival(origin + a[:, 0], a[:, 1], origin)
    with (root / "tide_gauge" / "nukualofa_tohoku_tsunami_detided.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    t = np.array([datetime.strptime(r["time"], "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=UTC).timestamp() for r in rows])
    out["nkfa"] = reference_arrival(t, np.array([float(r["resid"]) for r in rows]), origin)
    return out


def table(rows: list[Row]) -> str:
    lines = ["| station | detector | reference arrival | first trigger | delay (min) | "
             "false alarms (quiet days) | early (not the tsunami) | triggers |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        first = "none" if math.isnan(r.first_trigger) else iso(r.first_trigger)[11:19]
        delay = "-" if math.isnan(r.delay_s) else f"{r.delay_s / 60:+.1f}"
        lines.append(f"| {r.station_id} | {r.detector} | {iso(r.arrival)[11:19]} | {first} | "
                     f"{delay} | {r.false_alarms} | {r.early} | {r.triggers} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = load_package(build_tohoku(args.shared, Path(tmp) / "tohoku2011"))
        rows = compare(pkg, tohoku_arrivals(args.shared, TOHOKU_ORIGIN), TOHOKU_ORIGIN)
    text = table(rows)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
