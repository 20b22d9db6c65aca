"""A synthetic multi-station earthquake recorded on real noise.

Stations sit at real coordinates (II.MSVF and the IOC tide-gauge sites of the registry);
the P arrival at each comes from ``obspy.taup`` (iasp91, computed per station here, not
from the locator's table); the waveform is a 0.1-Hz damped sine whose displacement
amplitude follows the magnitude relation of :mod:`detectors.seismic` with a station gain;
the noise is a real stretch of a quiet seismic record (a different offset per station),
passed in by the caller (the tests take it from the MSVF record before the eruption).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detectors.base import FloatArray, StationInfo
from detectors.geo import great_circle_km
from detectors.seismic import KM_PER_DEG

# real coordinates: II.MSVF (tonga2022 PROVENANCE.md) and IOC gauges (replay/stations)
SITES = {
    "II.MSVF.10.LHZ": (-17.745, 178.053),
    "SY.NKFA..LHZ": (-21.1303, -175.1967),
    "SY.PAGO..LHZ": (-14.2766, -170.6907),
    "SY.VITI..LHZ": (-18.1342, 178.4236),
    "SY.VANU..LHZ": (-17.7553, 168.3077),
    "SY.NORF..LHZ": (-29.0591, 167.9536),
}
GAIN = 6.0e8  # counts per metre of displacement at 10 s (an STS-2-like broadband channel)


@dataclass(frozen=True)
class Quake:
    lat: float
    lon: float
    depth_km: float
    time: float
    magnitude: float


def p_arrival(q: Quake, lat: float, lon: float) -> tuple[float, float]:
    """(P arrival time, distance in degrees) from obspy.taup iasp91."""
    from obspy.taup import TauPyModel

    dist = float(great_circle_km(q.lat, q.lon, lat, lon)) / KM_PER_DEG
    arr = TauPyModel("iasp91").get_travel_times(source_depth_in_km=q.depth_km,
                                                distance_in_degree=dist, phase_list=["ttp"])
    return q.time + min(a.time for a in arr), dist


def record(q: Quake, noise: FloatArray, t0: float, dt: float = 1.0, seconds: float = 3600.0,
           seed: int = 0) -> dict[StationInfo, FloatArray]:
    """One trace per site, starting at ``t0``, with the quake on real ``noise``."""
    rng = np.random.default_rng(seed)
    n = int(seconds / dt)
    if len(noise) < n:
        raise ValueError(f"noise has {len(noise)} samples, a {seconds:g}-s trace needs {n}")
    out: dict[StationInfo, FloatArray] = {}
    t = t0 + np.arange(n) * dt
    for sid, (lat, lon) in SITES.items():
        arrival, dist = p_arrival(q, lat, lon)
        period = 10.0
        # M = log10(A_um / T) + 1.66 log10(dist) + 3.3, A the displacement amplitude
        a_um = period * 10 ** (q.magnitude - 1.66 * math.log10(dist) - 3.3)
        s = t - arrival
        wave = np.where(s >= 0, np.sin(2 * np.pi * s / period) * np.exp(-s / 60.0), 0.0)
        start = int(rng.integers(0, len(noise) - n + 1))
        seg = noise[start:start + n]
        out[StationInfo(sid, "seismic", lat, lon, 0.0, "counts")] = (
            seg - seg[0] + a_um * 1e-6 * GAIN * wave)
    return out


def inventory(traces: dict[StationInfo, FloatArray], t0: float) -> Any:
    """A StationXML inventory of the sites: coordinates and a broadband velocity response
    (flat above 1/120 Hz) whose displacement gain at 10 s is :data:`GAIN`."""
    from obspy import UTCDateTime
    from obspy.core.inventory import Channel, Inventory, Network, Response, Site, Station

    sens = GAIN / (2 * math.pi * 0.1)  # counts per m/s: G = S * 2 pi f for a velocity sensor
    w = 2 * math.pi / 120.0 / math.sqrt(2)  # two poles at 1/120 Hz, damping 0.707
    poles = [complex(-w, w), complex(-w, -w)]
    nets: dict[str, Network] = {}
    for st in traces:
        net, sta, loc, cha = st.station_id.split(".")
        resp = Response.from_paz(zeros=[0j, 0j], poles=poles,
                                 stage_gain=sens, stage_gain_frequency=0.1, input_units="M/S",
                                 output_units="COUNTS", normalization_frequency=0.1)
        channel = Channel(cha, loc, st.lat, st.lon, st.elevation_m, 0.0, sample_rate=1.0,
                          start_date=UTCDateTime(t0 - 86400), response=resp)
        station = Station(sta, st.lat, st.lon, st.elevation_m, channels=[channel],
                          site=Site(name=f"{sta} (synthetic, real coordinates)"))
        nets.setdefault(net, Network(net)).stations.append(station)
    return Inventory(networks=list(nets.values()), source="tocsin seismic scenario")


def write_package(q: Quake, traces: dict[StationInfo, FloatArray], t0: float, out: Path,
                  dt: float = 1.0) -> Path:
    """A replay package (miniSEED per station, a StationXML inventory giving coordinates and
    responses) of ``record``'s traces, truth included."""
    from obspy import Trace, UTCDateTime

    from streams.schemas import iso

    (out / "data").mkdir(parents=True, exist_ok=True)
    n = max(len(v) for v in traces.values())
    inventory(traces, t0).write(str(out / "data" / "stations.xml"), format="STATIONXML")
    (out / "event.toml").write_text(
        "[event]\n"
        f'id = "seismic-synthetic"\n'
        f'title = "Synthetic M{q.magnitude:g} earthquake on real MSVF noise"\n'
        f'start = "{iso(t0)}"\nend = "{iso(t0 + n * dt)}"\n\n'
        "[truth]\n"
        f'origin_time = "{iso(q.time)}"\nlat = {q.lat}\nlon = {q.lon}\n'
        f"depth_km = {q.depth_km}\nmagnitude = {q.magnitude}\n\n"
        '[seismic]\ninventory = "data/stations.xml"\n')
    rows = ["station_id,kind,lat,lon,elevation_m,units,file,format"]
    for st, values in traces.items():
        net, sta, loc, cha = st.station_id.split(".")
        tr = Trace(data=values.astype(np.float64),
                   header={"network": net, "station": sta, "location": loc, "channel": cha,
                           "starttime": UTCDateTime(t0), "delta": dt})
        name = f"data/{st.station_id}.mseed"
        tr.write(str(out / name), format="MSEED", encoding="FLOAT64")
        # coordinates left to the inventory
        rows.append(f"{st.station_id},seismic,,,,counts,{name},mseed")
    (out / "stations.csv").write_text("\n".join(rows) + "\n")
    return out
