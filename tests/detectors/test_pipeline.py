"""DetectorBank: many packets at once equal the same packets one by one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors.base import StationInfo
from detectors.pipeline import DetectorBank

T0 = 1_600_000_000.0


def _packets(seed: int = 3) -> list[tuple[StationInfo, float, float, np.ndarray]]:
    """Seismic channels with bursts and barometers, cut into packets of random length and
    interleaved in batches: several packets of one station in one batch, redeliveries,
    overlaps and a packet of the wrong dtype among them."""
    rng = np.random.default_rng(seed)
    out = []
    seis = [StationInfo(f"XX.S{i:02d}..BHZ", "seismic", 0.0, i * 0.1) for i in range(12)]
    baro = [StationInfo(f"XX.B{i:02d}", "barometer", 10.0, i * 0.1, units="hPa")
            for i in range(4)]
    streams = []
    for s in seis:
        x = rng.standard_normal(int(900 * 20)) * 50.0
        k = int(rng.uniform(400, 800) * 20)
        x[k:k + 400] += rng.standard_normal(400) * 2000.0
        streams.append((s, 0.05, x))
    for s in baro:
        t = np.arange(4 * 3600.0)
        x = 1010.0 + np.cumsum(rng.standard_normal(len(t))) * 0.002
        x += 2.0 * np.exp(-0.5 * ((t - 9000.0) / 120.0) ** 2)
        streams.append((s, 1.0, x))
    pos = [0] * len(streams)
    while any(p < len(x) for p, (_, _, x) in zip(pos, streams, strict=True)):
        for j, (s, dt, x) in enumerate(streams):
            if pos[j] >= len(x):
                continue
            for _ in range(int(rng.integers(1, 4))):
                size = int(rng.choice([1, 20, 20, 60, 333]))
                a = pos[j]
                values = x[a:a + size]
                if rng.random() < 0.01:
                    values = values.astype(np.float32)
                out.append((s, T0 + a * dt, dt, values))
                if rng.random() < 0.05:
                    out.append((s, T0 + a * dt, dt, values))  # redelivered
                if rng.random() < 0.05 and a > 10:  # overlapping the last packet
                    out.append((s, T0 + (a - 5) * dt, dt, x[a - 5:a + size + 3]))
                    size += 3
                pos[j] = min(a + size, len(x))
    return out


def test_feed_many_equals_feed() -> None:
    packets = _packets()
    one = DetectorBank()
    expected = []
    for s, t0, dt, values in packets:
        try:
            expected.append(one.feed(s, t0, dt, values))
        except ValueError as e:
            expected.append(str(e))
    many = DetectorBank()
    got = []
    rng = np.random.default_rng(0)
    i = 0
    while i < len(packets):
        size = int(rng.integers(1, 200))
        got.extend(str(r) if isinstance(r, ValueError) else list(r)
                   for r in many.feed_many(packets[i:i + size]))
        i += size
    detections = [d for r in expected if isinstance(r, list) for d in r]
    kinds = {d.kind for d in detections}
    assert kinds == {"seismic", "barometer"}, kinds
    assert any(isinstance(r, str) for r in expected)
    assert got == expected
    for sid, p in one.pipelines.items():
        q = many.pipelines[sid]
        assert (p.packets, p.samples, p.duplicates, p.last_end) == (
            q.packets, q.samples, q.duplicates, q.last_end)
    assert many.groups, "the seismic channels went through the picker's rows"


def test_feed_many_stops_a_station_at_its_first_failing_detector() -> None:
    """With several detectors per station, as ``feed``: the ones after a failing detector
    do not see the packet."""
    from detectors.base import DetectorError

    kinds = {"seismic": ("detectors.picker:StaLtaPicker", "detectors.sealevel:TsunamiDetector")}
    st = StationInfo("XX.S00..BHZ", "seismic", 0.0, 0.0)
    rng = np.random.default_rng(0)
    # 0.3 s: the picker's 0.7-2 Hz band does not fit under the Nyquist frequency
    packets = [(st, T0, 0.3, rng.standard_normal(100)),
               (st, T0 + 100.0, 0.05, rng.standard_normal(2000))]
    one, many = DetectorBank(detectors=kinds), DetectorBank(detectors=kinds)
    expected, got = [], []
    for pkt in packets:
        try:
            expected.append(list(one.feed(*pkt)))
        except DetectorError as e:
            expected.append(str(e))
        got.extend(str(r) if isinstance(r, DetectorError) else list(r)
                   for r in many.feed_many([pkt]))
        a, b = (bank.pipelines[st.station_id].detectors[1] for bank in (one, many))
        assert a._last_t == b._last_t  # the tide-gauge detector saw the same packets
    assert isinstance(expected[0], str) and got == expected


class Boom:
    """A detector with a bug: it divides by zero on a packet holding a 13."""

    name = "boom"
    version = "0"

    def __init__(self, station: StationInfo, **params: object) -> None:
        self.station = station

    def feed(self, t0: float, dt: float, values: np.ndarray) -> list:
        if 13.0 in values:
            return [1 / 0]
        return []

    def params(self) -> dict:
        return {}


def test_a_detector_bug_sets_the_packet_aside_and_the_rest_goes_on() -> None:
    from detectors.base import DetectorFault

    kinds = {"barometer": ("tests.detectors.test_pipeline:Boom",),
             "seismic": ("detectors.picker:StaLtaPicker",)}
    a = StationInfo("XX.A", "barometer", 0.0, 0.0)
    b = StationInfo("XX.B..BHZ", "seismic", 0.0, 0.0)
    bad = (a, T0, 1.0, np.array([1.0, 13.0]))
    good = (b, T0, 0.05, np.random.default_rng(0).standard_normal(200))
    with pytest.raises(DetectorFault, match=r"XX.A: detector boom failed .*ZeroDivisionError"):
        DetectorBank(detectors=kinds).feed(*bad)
    bank = DetectorBank(detectors=kinds)
    out = bank.feed_many([bad, good])
    assert isinstance(out[0], DetectorFault) and isinstance(out[0].__cause__, ZeroDivisionError)
    assert list(out[1]) == []
    assert bank.pipelines["XX.A"].packets == 0 and bank.pipelines["XX.B..BHZ"].packets == 1
    assert list(bank.feed_many([(a, T0 + 2.0, 1.0, np.array([2.0]))])[0]) == []


def test_preload_imports_the_detectors_of_the_kinds_it_is_given() -> None:
    bank = DetectorBank(detectors={"barometer": ("tocsin_no_such_module:Detector",)})
    bank.preload(["tide_gauge"])  # a kind without detectors: nothing to import
    with pytest.raises(ModuleNotFoundError, match="tocsin_no_such_module"):
        bank.preload(["barometer", "tide_gauge"])


def test_a_first_packet_at_an_infinite_time_does_not_sink_the_others() -> None:
    """A never-fed barometer whose first packet starts at infinity, in one call with a good
    packet of another: each gets what feeding it alone gives (the rows' bin arithmetic
    overflowed and failed the whole call)."""
    import math

    from detectors.base import DetectorError

    a = StationInfo("XX.A", "barometer", 0.0, 0.0, units="hPa")
    b = StationInfo("XX.B", "barometer", 1.0, 1.0, units="hPa")
    values = np.full(600, 1010.0)
    packets = [(a, math.inf, 1.0, values), (b, T0, 1.0, values)]
    alone = DetectorBank()
    expected: list[object] = []
    for p in packets:
        try:
            expected.append(list(alone.feed(*p)))
        except DetectorError as exc:
            expected.append(f"{type(exc).__name__}: {exc}")
    got = [r if isinstance(r, list | tuple) else f"{type(r).__name__}: {r}"
           for r in DetectorBank().feed_many(packets)]
    assert [list(r) if isinstance(r, tuple) else r for r in got] == expected


@pytest.mark.parametrize("start", [math.inf, math.nan])
def test_a_packet_at_a_non_finite_time_is_refused_naming_it(start: float) -> None:
    """An infinite start was taken; the station's next good packet then overflowed in the
    re-send check (an OverflowError, not a DetectorError) and failed the whole call, the
    other station's packet with it. A nan start passed the detectors' order checks and
    turned them off."""
    from detectors.base import PacketError
    from detectors.picker import StaLtaPicker
    from detectors.pressure import LambPulseDetector

    a = StationInfo("XX.A", "barometer", 0.0, 0.0, units="hPa")
    b = StationInfo("XX.B", "barometer", 1.0, 1.0, units="hPa")
    values = np.full(600, 1010.0)
    bank = DetectorBank()
    first = bank.feed_many([(a, start, 1.0, values)])
    assert isinstance(first[0], PacketError) and f"packet start {start!r}" in str(first[0])
    out = bank.feed_many([(a, T0, 1.0, values), (b, T0, 1.0, values)])
    assert [list(r) for r in out] == [[], []]
    assert bank.pipelines["XX.A"].packets == 1
    for det in (LambPulseDetector(a), StaLtaPicker(StationInfo("XX.C..BHZ", "seismic", 0, 0))):
        with pytest.raises(PacketError, match=f"packet start {start!r} is not finite"):
            det.feed(start, 1.0, values)


def test_values_that_are_not_an_array_are_refused_naming_the_station() -> None:
    """A list of samples (a library caller's packet) failed the barometers' batch with an
    AttributeError, as a fault of the whole batch; now each detector kind refuses it as a
    bad packet of its station and the other stations' packets go through."""
    from detectors.base import PacketError

    kinds = [StationInfo("XX.A", "barometer", 0.0, 0.0, units="hPa"),
             StationInfo("XX.T", "tide_gauge", 0.0, 0.0, units="m"),
             StationInfo("XX.S..BHZ", "seismic", 0.0, 0.0)]
    good = StationInfo("XX.B", "barometer", 1.0, 1.0, units="hPa")
    bank = DetectorBank()
    out = bank.feed_many([(s, T0, 1.0, [1.0] * 600) for s in kinds]
                         + [(good, T0, 1.0, np.full(600, 1010.0))])
    for s, res in zip(kinds, out, strict=False):
        assert isinstance(res, PacketError), res
        assert str(res).startswith(f"{s.station_id}: ") and "array, got list" in str(res)
    assert list(out[-1]) == [] and bank.pipelines["XX.B"].packets == 1


def test_forget_restarts_a_station_and_leaves_the_others_alone() -> None:
    """What a worker does to the stations of a partition it takes over before it re-reads
    their records: the forgotten stations start afresh, the others go on as before, and
    the groups of ``feed_many`` keep no row for the dropped detectors."""
    packets = _packets()
    cut = len(packets) // 2
    gone = {"XX.B01", "XX.S03..BHZ"}

    def run(forget: bool) -> tuple[DetectorBank, list[object]]:
        bank = DetectorBank()
        out: list[object] = []
        for i in range(0, len(packets), 97):
            if forget and i <= cut < i + 97:
                old = [bank.pipelines[sid] for sid in gone]
                for sid in gone:
                    bank.forget(sid)
                grouped = [d for pipe in old for d in pipe.detectors
                           if getattr(d, "_rows", None) is not None]
                assert not grouped, "a forgotten detector kept its row in a group"
            out.extend(str(r) if isinstance(r, ValueError) else list(r)
                       for r in bank.feed_many(packets[i:i + 97]))
        return bank, out

    _, kept = run(False)
    _, forgot = run(True)
    first = next(i for i in range(0, len(packets), 97) if i <= cut < i + 97)
    fresh = DetectorBank()
    for i, (s, t0, dt, values) in enumerate(packets):
        if s.station_id in gone:
            if i >= first:
                r = fresh.feed_many([(s, t0, dt, values)])[0]
                assert forgot[i] == (str(r) if isinstance(r, ValueError) else list(r))
        else:
            assert forgot[i] == kept[i]
    found = {d.station_id for r in kept if isinstance(r, list) for d in r}
    assert gone & found, "a forgotten station must have had detections for this to show"


def test_forget_frees_a_barometer_row_in_the_lamb_groups() -> None:
    rng = np.random.default_rng(5)
    stations = [StationInfo(f"XX.B{i}", "barometer", 0.0, float(i), units="hPa")
                for i in range(5)]
    series = [1010.0 + np.cumsum(rng.standard_normal(3 * 3600)) * 0.002 for _ in stations]
    bank = DetectorBank()
    for a in range(0, 2 * 3600, 600):  # frames: the same stretch at every station
        bank.feed_many([(s, T0 + a, 1.0, x[a:a + 600]) for s, x in zip(stations, series,
                                                                          strict=True)])
    det = bank.pipelines["XX.B1"].detectors[0]
    rows = det._rows  # type: ignore[attr-defined]
    assert rows is not None, "quiet barometers fed in frames share rows"
    members = rows.members
    bank.forget("XX.B1")
    assert det._rows is None and rows.members == members - 1  # type: ignore[attr-defined]
    assert "XX.B1" not in bank.pipelines
    out = bank.feed_many([(s, T0 + 7200, 1.0, x[7200:7800]) for s, x in zip(stations, series,
                                                                           strict=True)])
    assert not [r for r in out if isinstance(r, Exception)]
    assert bank.pipelines["XX.B1"].detectors[0] is not det


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _lamb_packets(size: int = 600) -> tuple[StationInfo, list[tuple[float, float, np.ndarray]]]:
    """A barometer with a Lamb-like pulse at T0 + 9000 s, cut into packets of ``size`` s."""
    rng = np.random.default_rng(11)
    st = StationInfo("XX.BARO", "barometer", 10.0, 0.0, units="hPa")
    t = np.arange(4 * 3600.0)
    x = 1010.0 + np.cumsum(rng.standard_normal(len(t))) * 0.002
    x += 2.0 * np.exp(-0.5 * ((t - 9000.0) / 120.0) ** 2)
    return st, [(T0 + a, 1.0, x[a:a + size]) for a in range(0, len(x), size)]


def _feed_all(bank: DetectorBank, st: StationInfo,
              packets: list[tuple[float, float, np.ndarray]]) -> list[list[str] | str]:
    """``bank.feed`` of each packet: its detection keys, or the PacketError's message."""
    from detectors.base import PacketError

    out: list[list[str] | str] = []
    for p in packets:
        try:
            out.append([d.key for d in bank.feed(st, *p)])
        except PacketError as exc:
            out.append(f"PacketError: {exc}")
    return out


def test_a_packet_that_comes_after_a_later_one_raises_and_is_not_a_duplicate() -> None:
    """Two packets swapped in order: the later one is fed first (the earlier one's stretch
    is a gap), the earlier one then raises a PacketError naming the station, its start and
    end and where the station is, through ``feed`` and as ``feed_many``'s result (so the
    worker dead-letters it), and is not counted as a duplicate."""
    from detectors.base import DetectorError, PacketError

    st, packets = _lamb_packets()
    clean = [k for r in _feed_all(DetectorBank(), st, packets) if isinstance(r, list) for k in r]
    assert clean, "the clean feed must detect the pulse for this to show"
    k = max(i for i, (t0, _, _) in enumerate(packets) if t0 <= T0 + 9000.0)
    swapped = [*packets[:k], packets[k + 1], packets[k], *packets[k + 2:]]
    late_t0, _, late = packets[k]
    late_end = late_t0 + len(late) - 1
    reached = packets[k + 1][0] + len(packets[k + 1][2]) - 1
    message = (f"XX.BARO: packet {_iso(late_t0)}..{_iso(late_end)} has samples in the gap "
               f"{_iso(late_t0 - 1)}..{_iso(late_end + 1)} it skipped, but the station has "
               f"reached {_iso(reached)}: it came after later samples")
    bank = DetectorBank()
    one = _feed_all(bank, st, swapped)
    late_result = one[k + 1]
    assert isinstance(late_result, str) and late_result.startswith(f"PacketError: {message}")
    assert bank.pipelines["XX.BARO"].duplicates == 0
    for size in (1, 7, len(swapped)):
        many = DetectorBank()
        got: list[list[str] | str] = []
        for i in range(0, len(swapped), size):
            got.extend(f"{type(r).__name__}: {r}" if isinstance(r, DetectorError)
                       else [d.key for d in r]
                       for r in many.feed_many([(st, *p) for p in swapped[i:i + size]]))
        assert got == one
        assert many.pipelines["XX.BARO"].duplicates == 0
    with pytest.raises(PacketError, match="XX.BARO: packet .* it came after later samples"):
        bank.feed(st, *packets[k])  # still not taken when it comes again


def test_re_sent_and_overlapping_packets_are_silent_duplicates() -> None:
    """Exact re-sends (of the last packet and of older ones, across a gap) and packets
    overlapping what was fed change nothing: the detections are those of the clean feed
    and feeding in chunks of any size remembers the same gaps."""
    st, packets = _lamb_packets()
    gap = 5  # packet 5 never comes: a real gap
    kept = [p for i, p in enumerate(packets) if i != gap]
    clean_bank = DetectorBank()
    clean = [k for r in _feed_all(clean_bank, st, kept) if isinstance(r, list) for k in r]
    assert clean
    resent: list[tuple[float, float, np.ndarray]] = []
    overlaps = 0
    for i, p in enumerate(kept):
        if i >= 3:
            resent.append(kept[i - 3])  # an older one again (from before the gap, too)
            t0, dt, prev = kept[i - 1]
            if p[0] == t0 + len(prev) * dt:  # the last one's end and p's start (its new tail)
                resent.append((t0 + 100.0, dt, np.concatenate([prev, p[2][:300]])[100:]))
                overlaps += 1
        resent.append(p)  # its head seen already if an overlap came
        resent.append(p)  # redelivered at once
    bank = DetectorBank()
    got = _feed_all(bank, st, resent)
    assert not [r for r in got if isinstance(r, str)], got
    assert [k for r in got if isinstance(r, list) for k in r] == clean
    pipe, ref = bank.pipelines["XX.BARO"], clean_bank.pipelines["XX.BARO"]
    assert overlaps > 10 and pipe.duplicates == len(kept) + len(kept) - 3
    assert (pipe.packets, pipe.samples, pipe.last_end) == (
        ref.packets + overlaps, ref.samples, ref.last_end)
    assert list(pipe.gaps) == list(ref.gaps) == [(T0 + gap * 600 - 1, T0 + (gap + 1) * 600)]
    # the same record in chunks of any size: the same gap, nothing else
    rng = np.random.default_rng(2)
    chunked = DetectorBank()
    for t0, dt, x in kept:
        a = 0
        while a < len(x):
            b = a + int(rng.choice([1, 13, 60, 600]))
            chunked.feed(st, t0 + a * dt, dt, x[a:b])
            a = b
    assert list(chunked.pipelines["XX.BARO"].gaps) == list(ref.gaps)


@pytest.mark.parametrize(("kind", "dt"), [("seismic", 0.01), ("seismic", 0.004),
                                         ("barometer", 0.005), ("seismic", 0.05)])
def test_an_overlapping_re_send_at_a_high_rate_keeps_its_new_tail(kind: str, dt: float
                                                                   ) -> None:
    """A re-send that starts k samples into what was fed and runs on past it gives its new
    tail to the detectors, for every k: at 100 Hz and 1.64e9 s the sample index of the last
    sample fed came out at 485.99999, the kept tail began on that sample and the packet was
    refused (82 of 200 overlaps at 100 Hz)."""
    st = StationInfo("XX.S.00.HHZ", kind, 10.0, 20.0)
    t, n = 1_642_200_000.0, 500
    v = np.random.default_rng(0).standard_normal(2 * n)
    for k in range(1, n):
        bank = DetectorBank()
        bank.feed(st, t, dt, v[:n])
        assert bank.feed(st, t + k * dt, dt, v[k:k + n]) == []
        pipe = bank.pipelines[st.station_id]
        assert (pipe.packets, pipe.samples) == (2, n + k), k
        assert pipe.last_end == pytest.approx(t + (n + k - 1) * dt, abs=1e-6), k
        assert list(pipe.gaps) == [], k


def test_a_packet_filling_an_earlier_gap_after_later_data_raises() -> None:
    """A stretch skipped (the station's data resumed after it) that comes later raises,
    whole or in part, and so does one before the first sample fed; re-sends on either side
    of the gap stay silent."""
    from detectors.base import PacketError

    st = StationInfo("XX.TIDE", "tide_gauge", 0.0, 0.0, units="m")
    dt = 60.0
    x = 0.5 * np.sin(np.arange(600) * dt * 2 * np.pi / 44712.0)
    bank = DetectorBank()
    bank.feed(st, T0 + 100 * dt, dt, x[100:200])
    bank.feed(st, T0 + 300 * dt, dt, x[300:400])  # 200..299 skipped
    bank.feed(st, T0 + 400 * dt, dt, x[400:500])  # contiguous: no gap
    pipe = bank.pipelines["XX.TIDE"]
    assert list(pipe.gaps) == [(T0 + 199 * dt, T0 + 300 * dt)]
    reached = _iso(T0 + 499 * dt)
    for a, b in ((200, 300), (250, 260), (150, 250), (290, 350), (150, 450)):
        with pytest.raises(PacketError) as info:
            bank.feed(st, T0 + a * dt, dt, x[a:b])
        assert str(info.value).startswith(
            f"XX.TIDE: packet {_iso(T0 + a * dt)}..{_iso(T0 + (b - 1) * dt)} has samples in "
            f"the gap {_iso(T0 + 199 * dt)}..{_iso(T0 + 300 * dt)} it skipped, but the "
            f"station has reached {reached}")
        r = DetectorBank(pipelines=bank.pipelines).feed_many([(st, T0 + a * dt, dt, x[a:b])])
        assert isinstance(r[0], PacketError) and str(r[0]) == str(info.value)
    with pytest.raises(PacketError, match=r"XX.TIDE: packet .* has samples before "
                                          rf"{_iso(T0 + 100 * dt)}, the first sample it was fed"):
        bank.feed(st, T0, dt, x[:150])
    for a, b in ((100, 200), (150, 200), (300, 500), (350, 420), (450, 520)):
        assert bank.feed(st, T0 + a * dt, dt, x[a:b]) == []
    assert pipe.duplicates == 4 and pipe.last_end == T0 + 519 * dt


def test_a_station_remembers_its_last_gaps_only() -> None:
    """The gaps kept are bounded: past MAX_GAPS the oldest go, and a packet reaching back
    before the oldest kept is not taken (it cannot be told a re-send)."""
    from detectors.base import PacketError
    from detectors.pipeline import MAX_GAPS

    st = StationInfo("XX.TIDE", "tide_gauge", 0.0, 0.0, units="m")
    bank = DetectorBank(detectors={})
    for i in range(MAX_GAPS + 10):
        bank.feed(st, T0 + 10.0 * i, 1.0, np.zeros(5))  # 5 s of data, 5 s of gap
    pipe = bank.pipelines["XX.TIDE"]
    assert len(pipe.gaps) == MAX_GAPS and pipe.forgotten == 9
    assert pipe.known_from == T0 + 90.0
    assert bank.feed(st, T0 + 90.0, 1.0, np.zeros(5)) == []  # the oldest stretch kept
    with pytest.raises(PacketError, match=rf"before {_iso(T0 + 90.0)}, the oldest stretch it "
                                          "remembers"):
        bank.feed(st, T0 + 80.0, 1.0, np.zeros(5))


def test_a_frame_that_comes_after_a_later_one_raises() -> None:
    """Grid frames: a re-sent frame is a duplicate, one never fed that comes after a later
    one raises."""
    from detectors.base import PacketError

    st = StationInfo("XX.GRID", "plume", 0.0, 0.0)
    bank = DetectorBank(detectors={"plume": ("tests.detectors.test_pipeline:Frames",)})
    lat, lon, h = np.zeros(3), np.zeros(3), np.zeros(3)
    bank.feed_frame(st, T0, lat, lon, h)
    bank.feed_frame(st, T0 + 1200.0, lat, lon, h)
    assert bank.feed_frame(st, T0, lat, lon, h) == []
    with pytest.raises(PacketError, match=rf"XX.GRID: frame at {_iso(T0 + 600.0)} is not one "
                                          rf"of the 2 frames .* reached {_iso(T0 + 1200.0)}"):
        bank.feed_frame(st, T0 + 600.0, lat, lon, h)
    assert bank.pipelines["XX.GRID"].duplicates == 1


class Frames:
    """A detector of grid frames that finds nothing."""

    name = "frames"
    version = "0"

    def __init__(self, station: StationInfo, **params: object) -> None:
        self.station = station

    def feed(self, t0: float, dt: float, values: np.ndarray) -> list:
        return []

    def feed_frame(self, t: float, lat: np.ndarray, lon: np.ndarray, values: np.ndarray) -> list:
        return []

    def params(self) -> dict:
        return {}


def test_a_start_beyond_year_9999_is_a_packet_error_not_a_crash() -> None:
    """A start in milliseconds taken for seconds (1.6e12 s, year 52000): the next packet's
    error message failed to write the time, a ValueError that was no DetectorError and
    escaped feed_many, so the other stations of the call got no results."""
    import numpy as np

    from detectors.base import DetectorError, StationInfo
    from detectors.pipeline import DetectorBank

    a = StationInfo("A", "barometer", -21.0, -175.0, 0.0, "hPa")
    b = StationInfo("B", "barometer", -20.0, -175.0, 0.0, "hPa")
    bank = DetectorBank()
    v = np.full(60, 1010.0)
    assert list(map(list, bank.feed_many([(a, 1.6e12, 1.0, v)]))) == [[]]
    out = bank.feed_many([(a, 1.642e9, 1.0, v), (b, 1.642e9, 1.0, v)])
    assert isinstance(out[0], DetectorError) and "1600000000059.0" in str(out[0])
    assert list(out[1]) == []  # type: ignore[arg-type]


def test_an_onset_is_never_after_the_last_bin_of_its_history() -> None:
    """With the last bin under k_onset, the interpolation between it and the one before
    went past it: an onset (270 s) after the trigger bin (240 s)."""
    from detectors.bins import run_onset

    hist = [(0.0, 6.0), (60.0, 6.0), (120.0, 6.0), (180.0, 1.0), (240.0, 2.0)]
    assert run_onset(hist, 2.5, 60.0, 240.0) == 240.0
    # the usual case is unchanged: between the last quiet bin and the first loud one
    assert run_onset([(0.0, 1.0), (60.0, 5.0), (120.0, 6.0)], 3.0, 60.0, 120.0) == 30.0


def test_a_packet_at_another_rate_over_what_was_fed_is_refused_not_dropped() -> None:
    """1-min DART data arriving after the 15-min data of the same hours, or a 0.5-s packet
    inside a 1-s stretch, was counted as a re-send and dropped without a word, though none
    of its samples had been fed. A re-send at the rate fed is still skipped."""
    from detectors.base import PacketError

    dart = StationInfo("DART.21413", "bottom_pressure", 30.5, 152.1, 0.0, "m")
    bank = DetectorBank()
    bank.feed(dart, T0, 900.0, np.full(48, 5825.0))
    with pytest.raises(PacketError, match=r"at a sample interval of 60 s reaches back over "
                                          r".* fed at 900 s: its samples were never fed"):
        bank.feed(dart, T0 + 5 * 3600 + 60, 60.0, np.full(119, 5825.5))
    baro = StationInfo("XX.B", "barometer", 0.0, 0.0, units="hPa")
    bank.feed(baro, T0, 1.0, np.full(600, 1010.0))
    with pytest.raises(PacketError, match="at a sample interval of 0.5 s"):
        bank.feed(baro, T0 + 100.5, 0.5, np.full(200, 1020.0))
    assert bank.pipelines["XX.B"].duplicates == 0
    # the same stretch again at the rate fed: a re-send, skipped
    assert bank.feed(baro, T0 + 100.0, 1.0, np.full(100, 1010.0)) == []
    assert bank.pipelines["XX.B"].duplicates == 1
    # a new rate after the last sample is a stretch of its own, and a re-send of it too
    bank.feed(baro, T0 + 600.0, 0.5, np.full(100, 1010.0))
    assert bank.feed(baro, T0 + 610.0, 0.5, np.full(20, 1010.0)) == []
    with pytest.raises(PacketError, match="fed at 0.5 s"):
        bank.feed(baro, T0 + 610.0, 1.0, np.full(20, 1010.0))
    assert bank.pipelines["XX.B"].duplicates == 2
