from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.base import Detection
from streams.schemas import (
    AlertMessage,
    Forecast,
    IncidentRevision,
    ObservationPacket,
    SchemaError,
    decode,
    encode,
    iso,
    parse_time,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
times = st.floats(min_value=0.0, max_value=4e9, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(finite, st.just(math.nan)), min_size=1, max_size=50),
    start=times,
    dt=st.floats(min_value=0.01, max_value=3600.0),
    sid=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1, max_size=12),
)
def test_observation_round_trip(values: list[float], start: float, dt: float, sid: str) -> None:
    pkt = ObservationPacket(sid, "barometer", "LDI", start, dt, np.array(values), "hPa",
                            source="test", seq=7, lat=-21.1, lon=-175.2)
    back = decode(encode(pkt))
    assert isinstance(back, ObservationPacket)
    assert back.station_id == sid and back.start == start and back.sample_interval == dt
    np.testing.assert_array_equal(back.values, pkt.values)  # NaN == NaN here
    assert back.seq == 7 and back.lat == -21.1


@settings(max_examples=40, deadline=None)
@given(onset=times, amp=finite, lag=st.floats(min_value=0, max_value=1e4))
def test_detection_round_trip(onset: float, amp: float, lag: float) -> None:
    det = Detection("NUKU", "barometer", "lamb_pulse", "1", onset, onset + lag, amp, "hPa",
                    onset + 2 * lag, lat=-21.1, lon=-175.2, params={"k": 3.0},
                    extra={"snr": 12.5})
    assert decode(encode(det)) == det


def test_incident_and_alert_round_trip() -> None:
    rev = IncidentRevision(
        "eruption-x", "volcanic_eruption", 2, 1642221000.0, "watch", 1642220085.0, -20.5,
        -175.4, 315.0, ("a", "b"), ("S1", "S2"), ("S9",), 12.0,
        (Forecast("abur", "tide_gauge", 1642246000.0, 8106.0),), (), ("pressure_front",),
        {"plume_height_km": 57.0},
    )
    assert decode(encode(rev)).to_dict() == rev.to_dict()
    nan_rev = IncidentRevision("t", "tsunami", 1, 1.0, "observed", math.nan, 1.0, 2.0,
                               math.nan, ("k",))
    assert decode(encode(nan_rev)).to_dict() == nan_rev.to_dict()
    alert = AlertMessage("urn:x", "Update", 1642221000.0, "eruption-x", 2, "Tsunami watch",
                         "Severe", "Expected", "Likely", "h", ("a,b,c",), "<alert/>")
    assert decode(encode(alert)) == alert


V2 = (b'{"schema": "tocsin.observation/2", "station_id": "X", "kind": "barometer", '
      b'"channel": "c", "start": "2022-01-15T00:00:00Z", "sample_interval_s": 1, '
      b'"units": "hPa", ')


def test_observation_version_1_still_decodes() -> None:
    """Packets written before version 2 (values as a JSON list, null = missing)."""
    raw = (b'{"schema": "tocsin.observation/1", "station_id": "X", "kind": "barometer", '
           b'"channel": "c", "start": "2022-01-15T00:00:00Z", "start_s": 1642204800.25, '
           b'"sample_interval_s": 1, "values": [1013.5, null, 1e-3], "units": "hPa"}')
    pkt = decode(raw)
    assert isinstance(pkt, ObservationPacket) and pkt.start == 1642204800.25
    np.testing.assert_array_equal(pkt.values, [1013.5, np.nan, 1e-3])
    wire = encode(pkt)
    assert b'"tocsin.observation/2"' in wire and b'"values_b64"' in wire
    np.testing.assert_array_equal(decode(wire).values, pkt.values)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"schema": "tocsin.nope/9"}', "tocsin.nope/9"),
        (b'{"schema": "tocsin.observation/1", "station_id": "X"}', "values"),
        (b'{"schema": "tocsin.observation/1", "station_id": "X", "kind": "volcano", '
         b'"channel": "c", "start": "2022-01-15T00:00:00Z", "sample_interval_s": 1, '
         b'"values": [1], "units": "hPa"}', "'volcano'"),
        (b'{"schema": "tocsin.observation/1", "station_id": "X", "kind": "barometer", '
         b'"channel": "c", "start": "2022-01-15T00:00:00Z", "sample_interval_s": -1, '
         b'"values": [1], "units": "hPa"}', "-1"),
        (b'{"schema": "tocsin.observation/1", "station_id": "X", "kind": "barometer", '
         b'"channel": "c", "start": "yesterday", "sample_interval_s": 1, '
         b'"values": [1], "units": "hPa"}', "'yesterday'"),
        (b'{"schema": "tocsin.observation/1", "station_id": "X", "kind": "barometer", '
         b'"channel": "c", "start": "2022-01-15T00:00:00Z", "sample_interval_s": 1, '
         b'"values": ["a"], "units": "hPa"}', "values"),
        (V2 + b'"dtype": "<f4", "values_b64": "AAAAAA=="}', "dtype '<f4'"),
        (V2 + b'"dtype": "<f8", "values_b64": "not base64!"}', "'not base64!'"),
        # padding missing, padding after a whole group, a line break inside
        (V2 + b'"dtype": "<f8", "values_b64": "AAAAAAAAAAA"}', "'AAAAAAAAAAA'"),
        (V2 + b'"dtype": "<f8", "values_b64": "AAAAAAAAAAAA="}', "'AAAAAAAAAAAA='"),
        (V2 + b'"dtype": "<f8", "values_b64": "AAAAAAAA\\nAAAA"}', "not base64"),
        (V2 + b'"dtype": "<f8", "values_b64": "AAAAAA=="}', "4 bytes"),
        (V2 + b'"dtype": "<f8"}', "values_b64"),
    ],
)
def test_bad_messages_name_the_bad_value(raw: bytes, needle: str) -> None:
    with pytest.raises(SchemaError, match=None) as info:
        decode(raw)
    assert needle in str(info.value)


def test_times() -> None:
    t = parse_time("2022-01-15T04:14:45Z")
    assert iso(t) == "2022-01-15T04:14:45.000Z"
    with pytest.raises(SchemaError, match="no time zone"):
        parse_time("2022-01-15T04:14:45")


def test_seismic_event_round_trip_and_bad_revision() -> None:
    from streams.schemas import SeismicEventMessage, encode

    body = {"event_id": "seismic-20231114T222702-1a2b3c", "revision": 2, "issued": 1.7e9,
            "lat": -20.03, "lon": -174.49, "depth_km": 33.0, "origin_time": 1.7e9 - 300,
            "rms_s": 0.31, "herr_km": 12.2, "gap_deg": 178.2, "magnitude": None,
            "magnitude_sigma": None, "magnitude_type": None, "stations": ["A", "B"],
            "arrivals": [{"pick": "sta_lta:A:1.000", "station_id": "A", "onset": 1.0}]}
    msg = decode(encode(SeismicEventMessage(body)))
    assert isinstance(msg, SeismicEventMessage) and msg.body == body
    assert msg.key == "seismic-20231114T222702-1a2b3c#2"
    bad = encode(SeismicEventMessage({**body, "revision": 0}))
    with pytest.raises(SchemaError, match="revision 0"):
        decode(bad)
    # each decoded, and then /api/state (or the console line) failed on it
    for change, reason in (
            ({"revision": True}, "field 'revision' = True is not of type"),
            ({"herr_km": "x"}, "field 'herr_km' = 'x' is not a number or null"),
            ({"magnitude": "7"}, "field 'magnitude' = '7' is not a number or null"),
            ({"stations": 5}, "field 'stations' = 5 is not a list of strings"),
            ({"stations": None}, "missing field 'stations'"),
            ({"origin_time": 1e20}, "origin_time = 1e+20 is not a time within 1900-2200"),
            ({"issued": "now"}, "field 'issued' = 'now' is not of type"),
            ({"lat": 95.0}, "lat 95.0 is not within -90..90"),
            ({"status": "maybe"}, "status 'maybe' is not 'located' or 'retracted'"),
            ({"event_id": "e\x0b"}, "event_id 'e\\x0b' is empty or not printable"),
            ({"arrivals": [1]}, "arrivals [1] is not a list of objects")):
        with pytest.raises(SchemaError, match=re.escape(reason)):
            decode(orjson.dumps({"schema": SeismicEventMessage.SCHEMA, **body, **change}))
    if_null = decode(orjson.dumps({"schema": SeismicEventMessage.SCHEMA, **body,
                                   "herr_km": None}))
    assert isinstance(if_null, SeismicEventMessage) and if_null.body["herr_km"] is None
    # left out: null, as the dashboard reads it (its snapshot raised KeyError: a week of 500s)
    bare = {k: v for k, v in body.items() if k not in ("herr_km", "rms_s", "magnitude")}
    left_out = decode(orjson.dumps({"schema": SeismicEventMessage.SCHEMA, **bare}))
    assert isinstance(left_out, SeismicEventMessage)
    assert (left_out.body["herr_km"], left_out.body["rms_s"]) == (None, None)
    from dashboards.state import LiveState

    state = LiveState()
    state.on_seismic(left_out.body)
    (shown,) = state.snapshot()["seismic_events"]
    assert shown["herr_km"] is None and shown["event_id"] == body["event_id"]



@pytest.mark.parametrize(("change", "reason"), [
    ({"forecasts": ["bad"]}, "forecast: 'bad' is not an object"),
    ({"forecasts": "bad"}, "field 'forecasts' = 'bad' is not a list"),
    ({"detections": "S1"}, "field 'detections' = 'S1' is not a list of strings"),
    ({"revision": -3}, "revision -3 is not a positive integer"),
    ({"revision": True}, "field 'revision' = True is not of type"),
    ({"lat": "abc"}, "field 'lat' = 'abc' is not a number or null"),
    ({"extra": [1]}, "field 'extra' = [1] is not an object"),
    ({"issued_s": 1e20}, "issued_s = 1e+20 is not a time within 1900-2200"),
    ({"origin_time_s": -1e12}, "origin_time_s = -1000000000000.0 is not a time"),
    ({"issued_s": "soon"}, "issued_s = 'soon' is not a number"),
])
def test_revisions_with_unusable_fields_do_not_decode(change: dict, reason: str) -> None:  # type: ignore[type-arg]
    """Each of these decoded and then crashed the alert agent (an exception that was not a
    SchemaError: no dead letter, and the agent's restart skipped the record)."""
    base = {"schema": "tocsin.incident/1", "incident_id": "x", "type": "volcanic_eruption",
            "revision": 1, "issued_s": 1.642e9, "status": "watch"}
    decode(orjson.dumps(base))  # the base is fine
    with pytest.raises(SchemaError, match=re.escape(reason)):
        decode(orjson.dumps({**base, **change}))


def test_a_revision_with_issued_s_null_decodes_from_issued() -> None:
    base = {"schema": "tocsin.incident/1", "incident_id": "x", "type": "volcanic_eruption",
            "revision": 1, "issued_s": None, "issued": "2022-01-15T04:39:45Z",
            "status": "watch"}
    assert decode(orjson.dumps(base)).issued == 1642221585.0  # type: ignore[union-attr]
    # so does the origin time (a producer that writes the ISO fields only got no origin)
    rev = decode(orjson.dumps({**base, "origin_time": "2022-01-15T04:14:45Z"}))
    assert rev.origin_time == 1642220085.0  # type: ignore[union-attr]
    assert math.isnan(decode(orjson.dumps(base)).origin_time)  # type: ignore[union-attr]
    with pytest.raises(SchemaError, match="origin_time"):
        decode(orjson.dumps({**base, "origin_time": "yesterday"}))


@pytest.mark.parametrize(("change", "reason"), [
    # each was taken (or changed) without a word, or refused without the field's name
    ({"seq": "7"}, "field 'seq' = '7' is not an integer >= 0"),
    ({"seq": 7.9}, "field 'seq' = 7.9 is not an integer >= 0"),
    ({"seq": -5}, "field 'seq' = -5 is not an integer >= 0"),
    ({"quality": "good"}, "field 'quality' = 'good' is not a list of strings"),
    ({"lat": True}, "field 'lat' = True is not a number or null"),
    ({"lat": "abc"}, "field 'lat' = 'abc' is not a number or null"),
    ({"source": 5}, "field 'source' = 5 is not a string"),
])
def test_packets_with_fields_of_the_wrong_type_do_not_decode(change: dict, reason: str  # type: ignore[type-arg]
                                                             ) -> None:
    pkt = orjson.loads(encode(ObservationPacket("S1", "barometer", "LDI", 1.642e9, 60.0,
                                                np.full(3, 1010.0), "hPa")))
    decode(orjson.dumps(pkt))
    with pytest.raises(SchemaError, match=re.escape(reason)):
        decode(orjson.dumps({**pkt, **change}))


def test_v1_values_and_detection_fields_are_checked() -> None:
    v1 = {"schema": "tocsin.observation/1", "station_id": "S1", "kind": "barometer",
          "channel": "LDI", "start_s": 1.642e9, "sample_interval_s": 60.0, "units": "hPa",
          "values": [1010.0, None, 1011]}
    got = decode(orjson.dumps(v1))
    assert np.isnan(got.values[1]) and got.values[2] == 1011.0  # type: ignore[union-attr]
    for bad, reason in (("1.5", "values[0] = '1.5'"), (True, "values[0] = True"),
                        ([1.0], "values[0] = [1.0]")):
        with pytest.raises(SchemaError, match=re.escape(reason)):
            decode(orjson.dumps({**v1, "values": [bad, 1.0]}))
    det = orjson.loads(encode(Detection("S1", "tide_gauge", "d", "1", 1.642e9, 1.642e9, 0.1,
                                        "m", 1.642e9, -21.0, -175.0)))
    for change, reason in (({"kind": "bogus"}, "kind 'bogus' not in"),
                           ({"params": "x"}, "field 'params' = 'x' is not an object"),
                           ({"lat": "x"}, "field 'lat' = 'x' is not a number or null")):
        with pytest.raises(SchemaError, match=re.escape(reason)):
            decode(orjson.dumps({**det, **change}))


def test_detection_and_packet_times_are_checked() -> None:
    det = orjson.loads(encode(Detection("S1", "tide_gauge", "d", "1", 1.642e9, 1.642e9, 0.1,
                                        "m", 1.642e9, -21.0, -175.0)))
    with pytest.raises(SchemaError, match=re.escape("t = 1e+20")):
        decode(orjson.dumps({**det, "t": [1e20, 1e20, 1e20]}))
    pkt = orjson.loads(encode(ObservationPacket("S1", "barometer", "LDI", 1.642e9, 60.0,
                                                np.full(3, 1010.0), "hPa")))
    with pytest.raises(SchemaError, match=re.escape("start_s = 1e+20")):
        decode(orjson.dumps({**pkt, "start_s": 1e20}))


def test_station_ids_with_control_characters_do_not_decode() -> None:
    # "GA\x0bUGE" decoded, and then lxml refused it in the CAP XML of every alert it was in
    pkt = orjson.loads(encode(ObservationPacket("S1", "barometer", "LDI", 1.642e9, 60.0,
                                                np.full(3, 1010.0), "hPa")))
    det = orjson.loads(encode(Detection("S1", "tide_gauge", "d", "1", 1.642e9, 1.642e9, 0.1,
                                        "m", 1.642e9, -21.0, -175.0)))
    for msg in (pkt, det):
        for sid in ("GA\x0bUGE", "S\x00", "S\x7f", "S\u2028"):
            with pytest.raises(SchemaError, match=re.escape(f"station_id {sid!r} has the "
                                                            "non-printable character")):
                decode(orjson.dumps({**msg, "station_id": sid}))
        assert decode(orjson.dumps({**msg, "station_id": "Nuku'alofa 2"})).station_id == (
            "Nuku'alofa 2")  # type: ignore[union-attr]
    with pytest.raises(SchemaError, match="station_id '' is empty"):
        ObservationPacket("", "barometer", "LDI", 1.642e9, 60.0, np.full(3, 1.0), "hPa")


def test_same_as_is_equality_of_the_wire_form() -> None:
    """``same_as`` stands in for ``to_dict() ==`` (most of the associator's time went to
    making the two dicts, their forecasts' ISO times above all): equal exactly when they
    are, NaN being None on the wire and distances rounded to the metre."""
    from dataclasses import replace

    from streams.schemas import Forecast, IncidentRevision

    fc = (Forecast("A", "tide_gauge", 1.6422e9, 812.3456, -21.1, -175.2),
          Forecast("B", "barometer", 1.6423e9, 1500.0))  # no coordinates: NaN
    base = IncidentRevision("i-1", "volcanic_eruption", 3, 1.6421e9, "watch", 1.6420e9, -20.5,
                            -175.4, 312.5, ("d1", "d2"), ("S1",), (), math.nan, fc, (),
                            ("pressure_front",), {"params": {"k": 1}})
    variants = {
        "itself": base,
        "a copy": replace(base, forecasts=tuple(replace(f) for f in fc), extra={
            "params": {"k": 1}}),
        "another revision": replace(base, revision=4),
        "issued later": replace(base, issued=base.issued + 60.0),
        "issued 0.1 ms later": replace(base, issued=base.issued + 1e-4),
        "no origin time": replace(base, origin_time=math.nan),
        "rms known": replace(base, rms_s=1.5),
        "status": replace(base, status="confirmed"),
        "another station": replace(base, stations_used=("S2",)),
        "extra": replace(base, extra={"params": {"k": 2}}),
        "distance within a metre": replace(base, forecasts=(
            replace(fc[0], distance_km=812.3456001), fc[1])),
        "distance a metre off": replace(base, forecasts=(
            replace(fc[0], distance_km=812.347), fc[1])),
        "eta": replace(base, forecasts=(replace(fc[0], eta=fc[0].eta + 1.0), fc[1])),
        "forecast lost its place": replace(base, forecasts=(
            replace(fc[0], lon=math.nan), fc[1])),
        "one forecast fewer": replace(base, forecasts=fc[:1]),
    }
    for name, other in variants.items():
        for a, b in ((base, other), (other, base)):
            assert a.same_as(b) == (a.to_dict() == b.to_dict()), name
            wire = [replace(r, revision=0, issued=0.0).to_dict() for r in (a, b)]
            assert a.same_as(b, issue=False) == (wire[0] == wire[1]), name
    # and the test has both answers in it
    assert base.same_as(variants["a copy"]) and not base.same_as(variants["eta"])
    assert base.same_as(variants["issued later"], issue=False)


def test_messages_that_could_not_be_handled_on_are_schema_errors() -> None:
    """Each of these decoded (or failed) with an error the agents do not catch, and the
    agent crashed on it (a crash loop: the record is fetched again)."""
    from streams.schemas import iso

    # a packet whose end is past year 9999: the "too far ahead" message could not be written
    good = orjson.loads(encode(ObservationPacket("S1", "tide_gauge", "X", 1.6e9, 60.0,
                                                 np.zeros(2), "m")))
    for interval in (1e12, 1e300):
        with pytest.raises(SchemaError, match=r"observation S1: 2 samples every .* do not "
                           r"end within 1900-2200 \(sample_interval_s or start is wrong\)"):
            decode(orjson.dumps({**good, "sample_interval_s": interval}))
    with pytest.raises(SchemaError, match="not within the years 1-9999"):
        iso(1e12)
    # a schema that is not a string (unhashable: TypeError in the decoder lookup)
    for schema in ([], {}, ["tocsin.observation/2"]):
        with pytest.raises(SchemaError, match=r"is not a string naming a message type"):
            decode(orjson.dumps({"schema": schema}))
    # params nested deeper than a message can be written again (orjson: 254 levels)
    det = orjson.loads(encode(Detection("X1", "seismic", "sta_lta", "1", 1.6e9, 1.6e9 + 5,
                                        1e4, "counts", 1.6e9 + 50)))
    nested = b'{"a":' * 300 + b"1" + b"}" * 300  # (orjson would not even write it)
    with pytest.raises(SchemaError, match="field 'params' nests deeper than 32 levels"):
        decode(orjson.dumps({**det, "params": None})[:-1] + b',"params":' + nested + b"}")
    shallow: object = 1
    for _ in range(31):
        shallow = [shallow]
    assert decode(orjson.dumps({**det, "extra": {"a": shallow}})).extra  # type: ignore[union-attr]


@pytest.mark.parametrize(("where", "change", "needle"), [
    ("incident", {"lat": 95.0}, "lat 95.0, lon -175.4 is not a position"),
    ("incident", {"lon": 400.0}, "lat -20.5, lon 400.0 is not a position"),
    ("incident", {"lon": None}, "lat -20.5 and lon None: a position has both or neither"),
    ("forecast", {"lon": None}, "lat -21.14 and lon None: a position has both or neither"),
    ("forecast", {"lat": -91.0}, "lat -91.0, lon -175.18 is not a position"),
])
def test_an_incident_or_forecast_off_the_globe_is_refused(where: str, change: dict[str, Any],
                                                          needle: str) -> None:
    """A revision from the topic with lat 95, lon 400 or a forecast's lon null decoded, and
    the CAP alert carried '<circle>95.0000,40.0000 50</circle>' and '-21.1400,nan 20'
    (the XSD has a circle as a string: it went out to the agencies)."""
    rev = IncidentRevision("i-1", "volcanic_eruption", 1, 1.6421e9, "watch", 1.6420e9, -20.5,
                           -175.4, 312.5, ("d1",), ("S1",),
                           forecasts=(Forecast("nkfa", "tide_gauge", 1.6422e9, 68.0, -21.14,
                                               -175.18),))
    d = rev.to_dict()
    if where == "incident":
        d.update(change)
    else:
        d["forecasts"][0].update(change)
    with pytest.raises(SchemaError, match=re.escape(needle)):
        decode(orjson.dumps(d))
    assert encode(decode(encode(rev))) == encode(rev)  # the position as it was


@pytest.mark.parametrize(("change", "needle"), [
    ({"status": "Retracted"}, "status 'Retracted' is not one of ('detected', 'watch'"),
    ({"status": "retracted "}, "status 'retracted ' is not one of"),
    ({"type": "meteor"}, "type 'meteor' is not one of ('volcanic_eruption', 'tsunami')"),
    ({"incident_id": ""}, "incident_id '' is empty"),
    ({"incident_id": "ev\x0bil"}, "incident_id 'ev\\x0bil' is empty"),
    ({"incident_id": "a/b"}, "incident_id 'a/b' is empty"),
])
def test_an_incident_s_id_type_and_status_are_the_documented_ones(change: dict[str, Any],
                                                                   needle: str) -> None:
    """A withdrawal spelt 'Retracted' decoded as a standing revision and an Actual Update
    went out; 'meteor' went out as 'meteor incident'; an empty id made 'tocsin..r1.alert'."""
    rev = IncidentRevision("i-1", "volcanic_eruption", 1, 1.6421e9, "watch", 1.6420e9, -20.5,
                           -175.4, 312.5, ("d1",), ("S1",))
    with pytest.raises(SchemaError, match=re.escape(needle)):
        decode(orjson.dumps({**rev.to_dict(), **change}))


def test_a_detection_off_the_globe_is_refused() -> None:
    """A detection at lat 95 (or with a lat and no lon) decoded; the associator made an
    incident there, kept it, and the alert stage refused every revision of it."""
    det = Detection("S", "plume", "plume_height", "1", 1.6421e9, 1.6421e9, 30.0, "km",
                    1.6421e9, -20.5, -175.4)
    d = orjson.loads(encode(det))
    for change, needle in (({"lat": 95.0}, "lat 95.0, lon -175.4 is not a position"),
                           ({"lon": None}, "lat -20.5 and lon None: a position has both")):
        with pytest.raises(SchemaError, match=re.escape(needle)):
            decode(orjson.dumps({**d, **change}))
    assert decode(encode(det)) == det


def test_a_station_id_longer_than_the_stores_column_is_refused() -> None:
    """A 101-character id was stored on SQLite and refused on PostgreSQL (a 100-character
    column): the workers' detections of it were StoreRefused there only."""
    from streams.schemas import STATION_ID_MAX, station_id_problem

    assert station_id_problem("S" * STATION_ID_MAX) is None
    assert station_id_problem("S" * 101) == "has 101 characters, more than 100"
    det = Detection("S" * 101, "plume", "plume_height", "1", 1.6421e9, 1.6421e9, 30.0, "km",
                    1.6421e9, -20.5, -175.4)
    with pytest.raises(SchemaError, match="has 101 characters, more than 100"):
        decode(encode(det))


def test_a_grid_value_beyond_float32_is_refused_not_made_missing() -> None:
    """The wire carries float32: a pixel of 1e39 became inf, which the plume detector takes
    as no value, so a pixel was lost without a word. It is a SchemaError naming it."""
    from streams.schemas import GridFrame

    def frame(values: list[float]) -> GridFrame:
        return GridFrame("HIMAWARI8.PLUME", "plume", 1.6422e9, np.array([-20.5, -20.6]),
                         np.array([-175.4, -175.3]), np.array(values), "km", (10, 10))

    with pytest.raises(SchemaError, match=r"values\[1\] = 1e\+39 is beyond float32"):
        frame([30.0, 1e39])
    ok = frame([30.0, 58.2])
    assert decode(encode(ok)).values.tolist() == ok.values.tolist()
    with pytest.raises(SchemaError, match="beyond float32"):
        decode(orjson.dumps({**orjson.loads(encode(ok)), "values": [1.0, -1e300]}))


@pytest.mark.parametrize(("change", "reason"), [
    # a vertical tab in one headline made /feed.atom unreadable (lxml: "PCDATA invalid
    # Char value 11") for every reader until the alert aged out (found by review)
    ({"headline": "Tsunami\x0bwatch"}, "headline has the character '\\x0b' (at 7), which "
                                       "XML does not allow"),
    ({"event": "a\x00"}, "event has the character '\\x00' (at 1)"),
    ({"headline": "\uffff"}, "headline has the character '\\uffff' (at 0)"),
    ({"references": ["a", "b\x1b"]}, "references has the character '\\x1b' (at 1)"),
    # the feed carries the CAP document inside an entry, and the outbox parses it
    ({"cap_xml": "<alert><info></alert>"}, "cap_xml is not well-formed XML"),
    ({"cap_xml": '<!DOCTYPE alert [<!ENTITY x "y">]><alert>&x;</alert>'},
     "cap_xml has a DOCTYPE"),
])
def test_an_alert_whose_texts_are_not_xml_does_not_decode(change: dict[str, Any],
                                                          reason: str) -> None:
    alert = AlertMessage("urn:x", "Update", 1642221000.0, "eruption-x", 2, "Tsunami watch",
                         "Severe", "Expected", "Likely", "h", ("a",), "<alert/>")
    wire = {**orjson.loads(encode(alert)), **change}
    with pytest.raises(SchemaError, match=re.escape(reason)):
        decode(orjson.dumps(wire))
    assert decode(encode(alert)) == alert  # tab, CR and LF are XML
    tabbed = AlertMessage("urn:x", "Update", 1642221000.0, "eruption-x", 2, "Tsunami watch",
                          "Severe", "Expected", "Likely", "a\tb\r\nc", (), "<alert>\n</alert>")
    assert decode(encode(tabbed)) == tabbed
