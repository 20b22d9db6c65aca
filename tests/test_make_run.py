"""`make run ARGS=--exit-when-done`: the README's main job, end to end, as a user runs it.

It starts its own broker (on free ports here), the workers and the dashboard, replays the
bundled Tonga scenario, prints what happens in order, and stops everything it started.
"""

from __future__ import annotations

import contextlib
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


def _processes_of(home: str) -> dict[int, str]:
    """The processes (pid: command line) whose environment or arguments name ``home``."""
    from pathlib import Path

    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if home in cmd or f"TOCSIN_HOME={home}".encode() in environ.split(b"\0"):
            out[int(proc.name)] = cmd
    return out


@pytest.mark.parametrize("sig", [15, 2], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_everything_the_run_started(tmp_path, sig: int) -> None:  # type: ignore[no-untyped-def]
    """`kill` (systemctl stop, docker stop) of a running `tocsin run`: uvicorn took the
    SIGTERM to stop the dashboard alone and then killed the process, leaving its broker and
    its workers running. Ctrl-C (SIGINT) the same way."""
    import sys
    import time

    home = str(tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
    env.update({"TOCSIN_HOME": home, "TOCSIN_HTTP_PORT": str(free_port()),
                "TOCSIN_BROKER_PORT": str(free_port()),
                "TOCSIN_CONTROLLER_PORT": str(free_port())})
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "tocsin", "run", "--exit-when-done",
                             "--duration", "120"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "replaying tonga2022" not in (tmp_path / "run.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(5)  # the workers are up and the replay is going
        assert any("kafka.Kafka" in c for c in _processes_of(home).values())
        assert any("tocsin worker" in c for c in _processes_of(home).values())
        proc.send_signal(sig)
        assert proc.wait(timeout=90) == 130, (tmp_path / "run.log").read_text()[-3000:]
        deadline = time.monotonic() + 10
        while _processes_of(home) and time.monotonic() < deadline:
            time.sleep(0.2)  # a stopped process may take a moment to be reaped
        assert _processes_of(home) == {}
        assert (tmp_path / "run.log").read_text().rstrip().endswith("stopped")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        log.close()
        for pid in _processes_of(home):  # never leave a broker behind, even on failure
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
