"""``make bench``: throughput figures and ratios, from one run.

* end to end: samples/s through ``tocsin replay --speed max`` (publish, workers with the
  detectors and the associator, collector) on a large synthetic package (>= 500 stations);
* raw consume: samples/s a plain aiokafka consumer reaches on the same packets from the
  same topic (no decoding), and the ratio of the two; beside them what bounds the end to
  end from below: publishing alone (no workers) and the detectors alone (no Kafka);
* detector kernels: samples/s of the streaming pressure detector fed 1-s packets over all
  stations (each second's packets as one frame, and one by one), next to an ObsPy batch
  kernel (``recursive_sta_lta``) on the same arrays;
* seismic picker: samples/s of the STA/LTA picker fed 1-s packets over 1000 20-Hz channels
  (each second's 1000 packets in one ``DetectorBank.feed_many``, and one by one), next to
  ObsPy's batch ``bandpass`` + ``recursive_sta_lta`` on the same arrays;
* SeedLink ingest: samples/s our client receives from our SeedLink server over loopback
  and decodes into observation packets (20 stations x a day of 1-Hz noise, Steim-2).

Targets (issues 2, 3, 5): >= 1 M samples/s end to end, >= 25 % of raw consume; kernels and
picker >= 25 % of the ObsPy batch kernel. The figures are printed, never asserted by unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tocsin.allocator import tune_allocator
from tocsin.settings import Settings


async def raw_consume(settings: Settings, topic: str, expected_records: int) -> float:
    """Seconds a plain consumer needs to read every record of ``topic`` from the start."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        seen = 0
        t0 = time.perf_counter()
        while seen < expected_records:
            batch = await consumer.getmany(timeout_ms=2000, max_records=10000)
            if not batch:
                raise RuntimeError(f"raw consume stalled at {seen}/{expected_records} records")
            seen += sum(len(v) for v in batch.values())
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


def e2e_run(pkg: Any, settings: Settings, partitions: int, workers: int,
            outgoing: Sequence[Any]) -> dict[str, float]:
    """One ``replay --speed max`` of ``pkg``, a raw consume of the packets it published
    (its topics are deleted afterwards) and a publish alone of ``outgoing`` (the package's
    packets, encoded)."""
    from replay.streaming import replay_package
    from streams.topics import Topics, delete_topics

    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(replay_package(
            pkg, settings, speed=None, partitions=partitions, workers=workers,
            progress_stream=None, run_dir=Path(tmp), keep_topics=True))
    run = report["run"]
    topics = Topics.for_run(settings, run["run_id"], run["partitions"])
    try:
        raw_s = asyncio.run(raw_consume(settings, topics.observations, run["packets"]))
    finally:
        asyncio.run(delete_topics(settings.bootstrap, topics))
    return {"e2e_s": run["elapsed_s"], "raw_s": raw_s, "samples": run["samples"],
            "packets": run["packets"], "publish_alone_s": publish_alone(pkg, settings,
                                                                        partitions, outgoing)}


def publish_alone(pkg: Any, settings: Settings, partitions: int,
                  outgoing: Sequence[Any]) -> float:
    """Seconds the replayer needs to publish ``pkg``'s encoded packets ``outgoing`` with no
    worker running (the part of the end-to-end time that no consumer can take away)."""
    import uuid

    from replay.streaming import Progress, publish
    from streams.topics import Topics, create_topics, delete_topics

    topics = Topics.for_run(settings, f"bench-publish-{uuid.uuid4().hex[:8]}", partitions)
    asyncio.run(create_topics(settings.bootstrap, topics))
    try:
        return asyncio.run(publish(settings, topics, list(outgoing), pkg, None,
                                   Progress(pkg, None)))
    finally:
        asyncio.run(delete_topics(settings.bootstrap, topics))


def feed_in_batches(bank: Any, infos: dict[str, Any], packets: Sequence[Any]) -> list[Any]:
    """``packets`` through ``bank`` as the detect agent takes them: in publish order, in
    batches of its largest (``DetectorBank.feed_many``), a grid frame alone after the
    packets before it. Their detections; the first error raised."""
    from streams.app import DETECT_BATCH
    from streams.schemas import GridFrame

    dets: list[Any] = []
    for i in range(0, len(packets), DETECT_BATCH):
        batch: list[tuple[Any, float, float, Any]] = []
        for pkt in packets[i:i + DETECT_BATCH]:
            if isinstance(pkt, GridFrame):
                dets.extend(_found(bank.feed_many(batch)))
                batch = []
                dets.extend(bank.feed_frame(infos[pkt.station_id], pkt.time, pkt.lat,
                                            pkt.lon, pkt.values))
            else:
                batch.append((infos[pkt.station_id], pkt.start, pkt.sample_interval,
                              pkt.values))
        dets.extend(_found(bank.feed_many(batch)))
    return dets


def _found(results: Sequence[Any]) -> Iterator[Any]:
    """The detections of ``DetectorBank.feed_many``'s results; its first error raised."""
    for res in results:
        if isinstance(res, Exception):
            raise res
        yield from res


def detect_alone(pkg: Any, packets: Sequence[Any]) -> float:
    """CPU seconds the detectors alone need for ``pkg``'s ``packets`` (no Kafka, no
    decoding), fed as the detect agent does (``feed_in_batches``), in this process. The
    workers cannot do the detection in less; on two cores it takes at least half this much
    wall clock."""
    from detectors.pipeline import DetectorBank

    infos = {s.station_id: s for s in pkg.station_infos()}
    bank = DetectorBank()
    bank.preload(s.kind for s in infos.values())
    t0 = time.process_time()
    feed_in_batches(bank, infos, packets)
    return time.process_time() - t0


def scenario_bench(settings: Settings) -> dict[str, float]:
    """The built-in Tonga scenario (tide gauges, DARTs, barometers, a plume) through the
    stages a worker runs, in this process: the detectors in batches of the detect agent's
    largest, the associator in declared order, the CAP alert policy. CPU seconds of each
    (the second of two runs: the first imports and warms up)."""
    from detectors.association import Associator
    from detectors.pipeline import DetectorBank
    from replay.package import load_package
    from replay.registry import build_registry
    from replay.run import package_packets
    from replay.scenario import ensure_builtin
    from responders.stage import alerts_for_revisions

    pkg = load_package(ensure_builtin("tonga2022", settings.cache_dir / "packages"))
    infos = {s.station_id: s for s in pkg.station_infos()}
    packets = package_packets(pkg, settings.packet_seconds)
    out: dict[str, float] = {}
    for _ in range(2):
        t0 = time.process_time()
        dets = feed_in_batches(DetectorBank(), infos, packets)
        t1 = time.process_time()
        assoc = Associator(build_registry(pkg, None))
        for det in sorted(dets, key=lambda d: (d.declared, d.key)):
            assoc.add(det)
        t2 = time.process_time()
        alerts = alerts_for_revisions(assoc.revisions(), "bench@localhost", "Exercise")
        t3 = time.process_time()
        out = {"samples": float(sum(len(p.values) for p in packets)),
               "packets": float(len(packets)), "detections": float(len(dets)),
               "revisions": float(len(assoc.revisions())), "alerts": float(len(alerts)),
               "detect_s": t1 - t0, "associate_s": t2 - t1, "alert_s": t3 - t2}
    return out


def association_bench(settings: Settings, days: int = 20, seed: int = 7) -> dict[str, float]:
    """A live feed for the associator alone: ``days`` days of stray seismic picks at 50
    stations (one every 3.6 min), stray pressure pulses and sea-level anomalies, in
    declared order. Median CPU per ``add`` on the third day and on the last: a bounded
    associator's cost does not grow with what it has seen."""
    import random

    from detectors.association import Associator
    from detectors.base import Detection, StationInfo
    from detectors.geo import wrap_lon
    from tocsin.tables import prime_travel_times

    prime_travel_times(settings.cache_dir)  # as a worker does: not in the first day's adds
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    sites = [(f"S{i:02d}", rng.uniform(-35, -5), wrap_lon(rng.uniform(160, 200)))
             for i in range(50)]
    gauges = [StationInfo(f"G{i}", "tide_gauge", rng.uniform(-40, 30), rng.uniform(120, 240))
              for i in range(20)]
    dets = []
    for i in range(int(days * 86400 / 216)):
        sid, lat, lon = rng.choice(sites)
        t = t0 + i * 216 + rng.uniform(0, 216)
        dets.append(Detection(sid, "seismic", "sta_lta", "1", t, t + 5, 1e4, "counts", t + 50,
                              lat=lat, lon=lon))
        if i % 40 == 0:
            dets.append(Detection(f"B{sid}", "barometer", "lamb_pulse", "1", t, t + 600, 1.0,
                                  "hPa", t + 900, lat=lat, lon=lon))
        if i % 100 == 0:
            g = rng.choice(gauges)
            dets.append(Detection(g.station_id, "tide_gauge", "sea_level", "1", t, t + 1200,
                                  0.2, "m", t + 3600, lat=g.lat, lon=g.lon))
    dets.sort(key=lambda d: (d.declared, d.key))
    assoc = Associator(gauges, history=False)
    per_day: dict[int, list[float]] = {}
    for d in dets:
        c = time.process_time()
        assoc.add(d)
        per_day.setdefault(int((d.declared - t0) // 86400), []).append(time.process_time() - c)
    # day 3: the state holds what a steady feed keeps (the tail, the lag, the pending picks)
    second, last = per_day[2], per_day[days - 1]
    size = assoc.state_size()
    return {"days": float(days), "detections": float(len(dets)),
            # medians: a day's mean moves by half with a stall of the machine
            "third_day_us": 1e6 * float(np.median(second)),
            "last_day_us": 1e6 * float(np.median(last)),
            "incidents": float(size["incidents"]), "pending": float(size["seismic_pending"]),
            "tail": float(size["tail"])}


def _median_run(runs: list[dict[str, float]], key: str) -> dict[str, float]:
    """The run whose ``key`` is the median."""
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


def _ratios(runs: list[dict[str, float]], key: str) -> str:
    return ", ".join(f"{r[key]:.1%}" for r in sorted(runs, key=lambda r: r[key]))


def _secs(runs: list[dict[str, float]], key: str) -> str:
    return ", ".join(f"{r[key]:.2f}" for r in runs) + " s"


def kernel_bench(pkg: Any, seconds: float = 600.0) -> dict[str, float]:
    """The Lamb-pulse detector on 1-s packets (one sample each) over all the package's
    barometers, each second's packets fed as one frame (``LambPulseDetector.feed_block``,
    as a worker does with a batch of same-time packets), next to ObsPy's batch
    ``recursive_sta_lta`` on the same arrays; also the packets one by one
    (``DetectorBank.feed``, a tenth of the stations)."""
    from obspy.signal.trigger import recursive_sta_lta

    from detectors.pipeline import DetectorBank
    from detectors.pressure import LambPulseDetector

    infos, rows, times = [], [], None
    for entry in pkg.stations:
        if entry.info.kind != "barometer":
            continue
        s = pkg.series(entry)
        n = int(seconds / float(np.median(np.diff(s.times))))
        if times is None:
            times = s.times[:n]
        elif not np.array_equal(times, s.times[:n]):
            raise ValueError(f"{entry.info.station_id}: the kernel bench needs one time grid")
        infos.append(entry.info)
        rows.append(s.values[:n])
    assert times is not None, "the bench package has no barometers"
    block = np.stack(rows)
    dets = [LambPulseDetector(info) for info in infos]
    groups: dict[Any, Any] = {}
    dt = float(times[1] - times[0])
    t0 = time.perf_counter()
    for i, t in enumerate(times.tolist()):
        LambPulseDetector.feed_block(dets, t, dt, block[:, i:i + 1], groups)
    ours = block.size / (time.perf_counter() - t0)
    bank = DetectorBank()
    part = max(1, len(infos) // 10)
    t0 = time.perf_counter()
    for i, t in enumerate(times.tolist()):
        for info, row in zip(infos[:part], block[:part], strict=True):
            bank.feed(info, t, dt, row[i:i + 1])
    one_by_one = part * len(times) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for v in block:
        recursive_sta_lta(np.nan_to_num(v - v.mean()), 5, 60)
    obspy_rate = block.size / (time.perf_counter() - t0)
    return {"kernel_samples": block.size, "kernel_samples_per_s": ours,
            "kernel_one_by_one_samples_per_s": one_by_one,
            "obspy_recursive_sta_lta_samples_per_s": obspy_rate,
            "kernel_ratio": ours / obspy_rate}


def picker_bench(channels: int = 1000, seconds: int = 600, rate: float = 20.0,
                 seed: int = 0) -> dict[str, float]:
    """The STA/LTA picker on 1-s packets over ``channels`` 20-Hz channels of noise, each
    second's packets handed to ``DetectorBank.feed_many`` together (as a worker does with a
    batch of events), and ObsPy's batch ``bandpass`` + ``recursive_sta_lta`` on the same
    arrays. Also the same packets fed one by one (``DetectorBank.feed``)."""
    from obspy.signal.filter import bandpass
    from obspy.signal.trigger import recursive_sta_lta

    from detectors.base import StationInfo
    from detectors.picker import PickerParams
    from detectors.pipeline import DetectorBank

    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    data = rng.standard_normal((channels, n)) * 100.0
    stations = [StationInfo(f"XX.S{i:04d}..BHZ", "seismic", 0.0, 0.0) for i in range(channels)]
    per = int(rate)
    dt = 1.0 / rate
    bank = DetectorBank()
    t0 = time.perf_counter()
    for k in range(0, n, per):
        t = 1e9 + k * dt
        bank.feed_many([(s, t, dt, row[k:k + per]) for s, row in zip(stations, data, strict=True)])
    ours = data.size / (time.perf_counter() - t0)
    single = DetectorBank()
    part = max(1, channels // 10)  # one by one is slow: a tenth of the channels
    t0 = time.perf_counter()
    for k in range(0, n, per):
        t = 1e9 + k * dt
        for s, row in zip(stations[:part], data[:part], strict=True):
            single.feed(s, t, dt, row[k:k + per])
    one_by_one = part * n / (time.perf_counter() - t0)
    p = PickerParams.for_rate(rate)
    t0 = time.perf_counter()
    for row in data:
        recursive_sta_lta(bandpass(row, p.freqmin, p.freqmax, rate, corners=p.corners),
                          int(p.sta_s * rate), int(p.lta_s * rate))
    batch = data.size / (time.perf_counter() - t0)
    return {"picker_samples": data.size, "picker_samples_per_s": ours,
            "picker_one_by_one_samples_per_s": one_by_one,
            "obspy_batch_samples_per_s": batch, "picker_ratio": ours / batch}


def _msvf_records() -> list[bytes]:
    """512-byte records of a quiet synthetic 1-Hz LHZ day (int32 noise, Steim-2)."""
    import io

    from obspy import Trace, UTCDateTime

    rng = np.random.default_rng(0)
    tr = Trace((rng.standard_normal(86400) * 300).astype(np.int32),
               header={"network": "XX", "station": "S000", "location": "10",
                       "channel": "LHZ", "starttime": UTCDateTime(1.7e9), "delta": 1.0})
    buf = io.BytesIO()
    tr.write(buf, format="MSEED", reclen=512, encoding="STEIM2")
    raw = buf.getvalue()
    return [raw[i:i + 512] for i in range(0, len(raw), 512)]


def seedlink_bench(records: list[bytes], stations: int = 20) -> dict[str, float]:
    """SeedLink ingest over loopback: our client and server, records decoded into packets
    (no Kafka), ``stations`` copies of the records under different station codes."""
    from replay.seedlink_server import SeedLinkServer
    from streams.seedlink import Ingest, SeedLinkClient

    recs: list[bytes] = []
    for i in range(stations):
        code = f"S{i:03d}".ljust(5).encode()
        recs.extend(r[:8] + code + r[13:] for r in records)

    async def run() -> tuple[int, float]:
        async with SeedLinkServer(recs) as srv:
            client = SeedLinkClient("127.0.0.1", srv.port,
                                    [f"XX.S{i:03d}.*.*" for i in range(stations)], fetch=True)
            ingest = Ingest(client)
            t0 = time.perf_counter()
            samples = 0
            async for seq, rec in client.packets():
                pkt = ingest.packet(seq, rec)
                samples += 0 if pkt is None else len(pkt.values)
            return samples, time.perf_counter() - t0

    for i, r in enumerate(recs):  # the network code of the copies
        recs[i] = r[:18] + b"XX" + r[20:]
    samples, seconds = asyncio.run(run())
    return {"seedlink_records": len(recs), "seedlink_samples": samples,
            "seedlink_samples_per_s": samples / seconds, "seedlink_s": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tocsin-bench", description=__doc__)
    ap.add_argument("--stations", type=int, default=500)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--partitions", type=int, default=4)
    # two workers: one per core of the reference machine (2 cores)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="measured runs after the warm-up")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs {args.runs}: at least one measured run")

    from deploy.broker import Broker
    from replay.package import load_package
    from replay.scenario import build_synthetic

    # as the tocsin command does; the raw consume below runs in this process too
    tune_allocator()
    settings = Settings()
    cache = settings.cache_dir / "packages" / f"bench-{args.stations}-{args.hours:g}h"
    if not (cache / "event.toml").exists():
        print(f"building a synthetic package: {args.stations} stations x {args.hours} h at 1 Hz",
              file=sys.stderr)
        build_synthetic(cache, n_stations=args.stations, hours=args.hours)
    pkg = load_package(cache)

    started = False
    broker = Broker(settings)
    if not settings.kafka_bootstrap and not broker.status().running:
        broker.start()
        started = True
    from replay.run import package_packets
    from replay.streaming import encode_packets

    # cut and encoded once: the detectors alone and every publish alone take these
    packets_cut = package_packets(pkg, settings.packet_seconds)
    outgoing = encode_packets(packets_cut)
    runs: list[dict[str, float]] = []
    try:
        # run 0 warms the broker up (its JIT compiles the produce and fetch paths, within
        # that run with C1: see deploy.broker.jit_opts; a broker in service has long done
        # so); the figures are the medians of the others
        for i in range(args.runs + 1):
            runs.append(e2e_run(pkg, settings, args.partitions, args.workers, outgoing))
            print(f"{'warm-up' if i == 0 else f'run {i}'}: end to end "
                  f"{runs[-1]['e2e_s']:.2f} s, raw consume {runs[-1]['raw_s']:.2f} s, "
                  f"publishing alone {runs[-1]['publish_alone_s']:.2f} s",
                  file=sys.stderr)
    finally:
        if started:
            broker.stop()
    measured = runs[1:]
    samples = int(measured[0]["samples"])
    packets = int(measured[0]["packets"])
    e2e_s = float(np.median([r["e2e_s"] for r in measured]))
    raw_s = float(np.median([r["raw_s"] for r in measured]))
    e2e = samples / e2e_s
    raw = samples / raw_s
    pub_s = float(np.median([r["publish_alone_s"] for r in measured]))
    det_s = float(np.median([detect_alone(pkg, packets_cut) for _ in range(3)]))
    # the kernels are timed in this process after the replays: a run can catch the machine
    # busy (the stopped broker's writeback, another tenant), so each is the run of median
    # ratio out of three
    kerns = [kernel_bench(pkg) for _ in range(3)]
    picks = [picker_bench() for _ in range(3)]
    kern, pick = _median_run(kerns, "kernel_ratio"), _median_run(picks, "picker_ratio")
    sl = seedlink_bench(_msvf_records())
    sc = scenario_bench(settings)
    ab = association_bench(settings)
    sc_s = sc["detect_s"] + sc["associate_s"] + sc["alert_s"]
    lines = [
        f"package                      {pkg.event_id}: {len(pkg.stations)} stations, "
        f"{samples} samples in {packets} packets",
        f"end to end (replay --speed max, {args.workers} worker(s), {args.partitions} "
        f"partitions): {e2e:,.0f} samples/s ({e2e_s:.2f} s, median of {len(measured)} runs "
        f"after a warm-up; all: {_secs(runs, 'e2e_s')})",
        f"raw aiokafka consume, same packets:   {raw:,.0f} samples/s ({raw_s:.2f} s, median: "
        f"{_secs(runs, 'raw_s')})",
        f"ratio end-to-end / raw consume:       {e2e / raw:.1%}   (target >= 25 %)",
        f"  publishing alone (no workers):      {samples / pub_s:,.0f} samples/s ({pub_s:.2f} s, "
        f"median: {_secs(runs, 'publish_alone_s')}; {pub_s / raw_s:.1f} x the raw consume "
        "time, see docs/design/throughput.md)",
        f"  detectors alone (no Kafka):         {samples / det_s:,.0f} samples/s ({det_s:.2f} "
        f"CPU-s in one process, median of 3; {det_s / raw_s:.1f} x the raw consume time)",
        f"end-to-end target 1 M samples/s:      {'met' if e2e >= 1e6 else 'NOT met'}",
        f"detector kernels, 1-s packets:        {kern['kernel_samples_per_s']:,.0f} samples/s "
        f"over {len(pkg.stations)} stations (each second's packets as one frame, "
        "LambPulseDetector.feed_block)",
        f"  the same packets one by one:        "
        f"{kern['kernel_one_by_one_samples_per_s']:,.0f} samples/s (DetectorBank.feed)",
        f"obspy recursive_sta_lta (batch):      "
        f"{kern['obspy_recursive_sta_lta_samples_per_s']:,.0f} samples/s",
        f"ratio kernels / obspy batch:          {kern['kernel_ratio']:.1%}   (target >= 25 %; "
        f"median of {_ratios(kerns, 'kernel_ratio')})",
        f"seismic picker, 1-s packets:          {pick['picker_samples_per_s']:,.0f} samples/s "
        f"({pick['picker_samples']:,} samples: 1000 channels x 10 min at 20 Hz, "
        "each second's packets in one DetectorBank.feed_many)",
        f"  the same packets one by one:        "
        f"{pick['picker_one_by_one_samples_per_s']:,.0f} samples/s (DetectorBank.feed)",
        f"obspy bandpass + recursive_sta_lta:   {pick['obspy_batch_samples_per_s']:,.0f} "
        "samples/s (batch, same arrays)",
        f"ratio picker / obspy batch:           {pick['picker_ratio']:.1%}   (target >= 25 %; "
        f"median of {_ratios(picks, 'picker_ratio')})",
        f"SeedLink ingest (loopback, decoded):  {sl['seedlink_samples_per_s']:,.0f} samples/s "
        f"({sl['seedlink_records']} 512-byte records, {sl['seedlink_s']:.2f} s)",
        f"Tonga scenario, a worker's stages:    {sc['samples'] / sc_s:,.0f} samples/s "
        f"({sc['samples']:,.0f} samples in {sc['packets']:,.0f} packets, {sc_s:.2f} CPU-s "
        "in one process, no Kafka)",
        f"  detectors:                          {sc['detect_s']:.2f} CPU-s "
        f"({sc['detections']:.0f} detections)",
        f"  associator:                         {sc['associate_s']:.2f} CPU-s "
        f"({sc['revisions']:.0f} revisions)",
        f"  CAP alerts:                         {sc['alert_s']:.2f} CPU-s "
        f"({sc['alerts']:.0f} alerts)",
        f"associator on a live feed:            {ab['third_day_us']:,.0f} us per detection "
        "(median) "
        f"on day 3, {ab['last_day_us']:,.0f} on day {ab['days']:.0f} "
        f"({ab['last_day_us'] / ab['third_day_us']:.2f} x; {ab['detections']:,.0f} "
        f"detections; held at the end: {ab['tail']:.0f} after the checkpoint, "
        f"{ab['pending']:.0f} pending picks, {ab['incidents']:.0f} incidents)",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
