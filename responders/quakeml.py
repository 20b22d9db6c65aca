"""QuakeML 1.2 of a located seismic event (a report's ``seismic_events`` entry), via ObsPy.

One document per event: the origin (time, position, depth, RMS, horizontal uncertainty),
the picks and their arrivals (P, residual, distance), the station magnitudes and the event
magnitude with its uncertainty. Resource ids are derived from the event id and revision,
so writing the same revision twice gives the same document.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from streams.schemas import parse_time

PREFIX = "smi:tocsin"


def event_quakeml(ev: dict[str, Any]) -> bytes:
    """The QuakeML 1.2 document of one seismic event (``report["seismic_events"][i]``)."""
    from obspy import UTCDateTime
    from obspy.core.event import (
        Amplitude,
        Arrival,
        Catalog,
        CreationInfo,
        Event,
        Magnitude,
        OriginQuality,
        OriginUncertainty,
        Pick,
        ResourceIdentifier,
        StationMagnitude,
        StationMagnitudeContribution,
        WaveformStreamID,
    )
    from obspy.core.event import Origin as QOrigin

    base = f"{PREFIX}/{ev['event_id']}/{ev['revision']}"

    def rid(kind: str, *parts: str) -> ResourceIdentifier:
        return ResourceIdentifier("/".join([base, kind, *parts]))

    info = CreationInfo(agency_id="tocsin", author="tocsin picker + grid-search locator",
                        creation_time=UTCDateTime(parse_time(ev["issued"])))
    origin = QOrigin(
        resource_id=rid("origin"), time=UTCDateTime(parse_time(ev["origin_time"])),
        latitude=ev["lat"], longitude=ev["lon"], depth=ev["depth_km"] * 1000.0,
        depth_type="from location", method_id=ResourceIdentifier(f"{PREFIX}/gridsearch/iasp91"),
        earth_model_id=ResourceIdentifier(f"{PREFIX}/model/iasp91"),
        # a null herr_km (the schema allows it) is an origin with no stated uncertainty
        origin_uncertainty=None if ev.get("herr_km") is None else OriginUncertainty(
            horizontal_uncertainty=ev["herr_km"] * 1000.0,
            preferred_description="horizontal uncertainty"),
        quality=OriginQuality(standard_error=ev["rms_s"],
                              used_phase_count=len(ev["arrivals"]),
                              used_station_count=len(ev["stations"]),
                              azimuthal_gap=ev.get("gap_deg")),
        evaluation_mode="automatic", evaluation_status="preliminary", creation_info=info)
    event = Event(resource_id=ResourceIdentifier(f"{PREFIX}/{ev['event_id']}"),
                  event_type="earthquake", creation_info=info)
    event.origins.append(origin)
    event.preferred_origin_id = origin.resource_id
    contributions = []
    for a in ev["arrivals"]:
        net, sta, loc, cha = (a["station_id"].split(".") + ["", "", "", ""])[:4]
        wid = WaveformStreamID(network_code=net, station_code=sta, location_code=loc,
                               channel_code=cha)
        pick = Pick(resource_id=rid("pick", a["station_id"]),
                    time=UTCDateTime(parse_time(a["onset"])), waveform_id=wid, phase_hint="P",
                    method_id=ResourceIdentifier(f"{PREFIX}/picker/sta_lta-aic"),
                    evaluation_mode="automatic", onset="impulsive")
        event.picks.append(pick)
        origin.arrivals.append(Arrival(resource_id=rid("arrival", a["station_id"]),
                                       pick_id=pick.resource_id, phase="P",
                                       time_residual=a["residual_s"],
                                       distance=a["distance_deg"]))
        amp = Amplitude(resource_id=rid("amplitude", a["station_id"]),
                        generic_amplitude=abs(a["amplitude"]), unit="other",
                        type="picker_peak_counts", pick_id=pick.resource_id, waveform_id=wid)
        event.amplitudes.append(amp)
        if a.get("station_magnitude") is not None:
            sm = StationMagnitude(resource_id=rid("stationmagnitude", a["station_id"]),
                                  origin_id=origin.resource_id, mag=a["station_magnitude"],
                                  station_magnitude_type=ev["magnitude_type"],
                                  amplitude_id=amp.resource_id, waveform_id=wid)
            event.station_magnitudes.append(sm)
            contributions.append(StationMagnitudeContribution(
                station_magnitude_id=sm.resource_id, weight=1.0))
    if ev.get("magnitude") is not None:
        mag = Magnitude(resource_id=rid("magnitude"), mag=ev["magnitude"],
                        mag_errors={"uncertainty": ev["magnitude_sigma"]},
                        magnitude_type=ev["magnitude_type"], origin_id=origin.resource_id,
                        station_count=len(contributions),
                        station_magnitude_contributions=contributions,
                        evaluation_mode="automatic")
        event.magnitudes.append(mag)
        event.preferred_magnitude_id = mag.resource_id
    buf = io.BytesIO()
    Catalog(events=[event], resource_id=rid("catalog")).write(buf, format="QUAKEML")
    return buf.getvalue()


def write_quakeml(report: dict[str, Any], out: Path) -> list[Path]:
    """One ``<event_id>.xml`` per seismic event of ``report`` in folder ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ev in report.get("seismic_events", []):
        path = out / f"{ev['event_id']}.xml"
        path.write_bytes(event_quakeml(ev))
        paths.append(path)
    return paths
