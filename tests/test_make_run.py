"""`make run ARGS=--exit-when-done`: the README's main job, end to end, as a user runs it.

It starts its own broker (on free ports here), the workers and the dashboard, replays the
bundled Tonga scenario, prints what happens in order, and stops everything it started.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_make_run_prints_the_incident_in_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    # as a user runs it: not a sub-make of `make test` (which would add make's own
    # "Entering/Leaving directory" lines), none of the test session's TOCSIN_ settings
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TOCSIN_") and k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env.update({"TOCSIN_HOME": str(tmp_path / "home"), "TOCSIN_HTTP_PORT": str(port),
                "TOCSIN_BROKER_PORT": str(free_port()),
                "TOCSIN_CONTROLLER_PORT": str(free_port())})
    r = subprocess.run(["make", "--no-print-directory", "run",
                        "ARGS=--exit-when-done --duration 45"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    assert f"dashboard: http://127.0.0.1:{port}/" in out
    assert "Atom feed of CAP alerts" in out and "CAP 1.2 files:" in out
    lines = out.splitlines()

    def first(pattern: str) -> int:
        for i, line in enumerate(lines):
            if re.search(pattern, line):
                return i
        raise AssertionError(f"no line matches {pattern!r}:\n{out[-4000:]}")

    plume = first(r"^DETECTION .* plume ")
    flag = first(r"^INCIDENT .* \[detected\] volcanic_eruption")
    front = first(r"^INCIDENT .* \[watch\] volcanic_eruption at .* speed \d+ m/s .*ETA watches")
    sea = first(r"^DETECTION .* (tide_gauge|bottom_pressure) +tsunami ")
    confirmed = first(r"^INCIDENT .* \[confirmed\] volcanic_eruption")
    alert = first(r"^ALERT .* CAP Alert ")
    update = first(r"^ALERT .* CAP Update ")
    # the plume flag, then the pressure-front solution with ETA watches, then sea level
    assert plume < flag < front < confirmed
    assert sea < confirmed and alert < update
    assert re.search(r"1 incidents|incidents, \d+ alerts", out)
    caps = list((tmp_path / "home" / "alerts" / "tonga2022").glob("*.xml"))
    assert caps, "the CAP drop folder is empty"
    assert lines[-1].strip() == "stopped"
    status = subprocess.run([str(REPO / ".venv" / "bin" / "tocsin"), "broker", "status"],
                            env=env, capture_output=True, text=True)
    assert status.returncode == 1 and "broker stopped" in status.stdout
