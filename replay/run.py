"""``tocsin detect``: the whole detection chain in one process, with no broker.

It runs the very same stages as the stream workers (per-station detector pipelines, the
associator, the alert policy) over the package's packets, so its report must equal the
report of ``tocsin replay`` through Kafka.
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any

from detectors.association import Associator
from detectors.base import Detection, DetectorError
from detectors.pipeline import DetectorBank
from detectors.seismic import SeismicParams
from replay.package import ReplayPackage
from replay.registry import build_registry
from replay.report import build_report
from responders.stage import alerts_for_revisions
from responders.store import Store
from streams.schemas import GridFrame, ObservationPacket, iso


def package_packets(pkg: ReplayPackage,
                    packet_seconds: float) -> list[ObservationPacket | GridFrame]:
    """All packets of a package in event-time order (by packet end, then station)."""
    streams = [pkg.packets(entry, packet_seconds) for entry in pkg.stations]
    merged = heapq.merge(*streams, key=lambda p: (p.end, p.station_id))
    return list(merged)


def detect_package(pkg: ReplayPackage, *, packet_seconds: float = 600.0,
                   registry_file: Path | None = None,
                   store: Store | None = None,
                   cap_sender: str = "tocsin@localhost") -> dict[str, Any]:
    """The detectors, the associator and the alert policy in-process; with ``store`` the
    outputs are also saved as the workers save them (same keys: rerunning adds nothing).
    The alerts are CAP Exercise messages, as a replay's are: recorded data.

    A packet the detectors refuse (a :class:`DetectorError`) is set aside, as a worker
    dead-letters it, and the run goes on: the report's ``run.dead_letters`` names each."""
    bank = DetectorBank()
    registry = build_registry(pkg, registry_file)
    assoc = Associator(registry, seismic=SeismicParams(gains=pkg.seismic_gains))
    infos = {s.station_id: s for s in pkg.station_infos()}
    detections: list[Detection] = []
    dead_letters: list[dict[str, str]] = []
    for pkt in package_packets(pkg, packet_seconds):
        info = infos[pkt.station_id]
        try:
            if isinstance(pkt, GridFrame):
                dets = bank.feed_frame(info, pkt.time, pkt.lat, pkt.lon, pkt.values)
            else:
                dets = bank.feed(info, pkt.start, pkt.sample_interval, pkt.values)
        except DetectorError as exc:
            when = (iso(pkt.time) if isinstance(pkt, GridFrame)
                    else f"{iso(pkt.start)}..{iso(pkt.end)}")
            dead_letters.append({"source": f"packet {pkt.station_id} {when}",
                                 "reason": f"{type(exc).__name__}: {exc}",
                                 "key": pkt.station_id})
            continue
        detections.extend(dets)
    # the stream's associator takes detections in declared order behind the watermark;
    # so does this one
    for det in sorted(detections, key=lambda d: (d.declared, d.key)):
        assoc.add(det)
    revisions = assoc.revisions()
    alerts = alerts_for_revisions(revisions, cap_sender, "Exercise")
    if store is not None:
        store.save_all(detections)
        store.save_all(revisions)
        store.save_all(alerts)
    event = {"id": pkg.event_id, "title": pkg.title, **report_window(pkg)}
    report = build_report(event, detections, revisions, alerts, mode="detect",
                          seismic_gains=pkg.seismic_gains)
    report["run"] = {"dead_letters": dead_letters}
    return report


def report_window(pkg: ReplayPackage) -> dict[str, str]:
    """The replay window in the report's time format (event.toml may write it otherwise: a
    TOML datetime, an offset, no milliseconds)."""
    return {"start": iso(pkg.start), "end": iso(pkg.end)}
