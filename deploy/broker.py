"""A real Apache Kafka broker (KRaft, combined broker + controller, one node) for tocsin.

The jars come from Maven Central through ``deploy/kafka/pom.xml`` into a cache folder
outside the repository (``$TOCSIN_CACHE_DIR/kafka-<version>/libs``) and are reused when present.
The broker listens on 127.0.0.1 only, formats its storage on first start, logs to
``$TOCSIN_HOME/broker/broker.log`` and is stopped with SIGTERM (SIGKILL after a timeout).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tocsin.settings import Settings

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
LOG4J = Path(__file__).resolve().parent / "kafka" / "log4j2.properties"
#: Kafka's own JVM performance options (bin/kafka-run-class.sh)
JVM_OPTS = ("-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:MaxInlineLevel=15", "-Djava.awt.headless=true")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def heap_bytes(heap: str) -> int:
    """``-Xmx`` syntax (``768m``, ``2g``, ``524288k``, bytes) -> bytes."""
    text = heap.strip().lower()
    num, unit = (text[:-1], text[-1]) if text and text[-1] in "kmg" else (text, "")
    if not num.isdigit() or int(num) == 0:
        raise BrokerError(f"broker heap {heap!r} is not a JVM heap size such as 768m or 2g")
    return int(num) * _UNITS[unit]


def g1_region_opts(heap: str) -> tuple[str, ...]:
    """The heap region size Kafka's operations guide recommends (16 MB) from a 512-MB heap
    up: a produce request of a few MB is then not a "humongous" object, which in the 1-MB
    regions of a 768-MB heap started a concurrent G1 cycle per request. Smaller heaps keep
    the JVM's choice (16-MB regions would leave too few of them)."""
    return ("-XX:G1HeapRegionSize=16M",) if heap_bytes(heap) >= 512 << 20 else ()


def jit_opts(jit: str) -> tuple[str, ...]:
    """``c1``: the client compiler only. With the JVM's tiered default the server
    compiler's threads go on compiling the produce and fetch paths on the cores the workers
    use: over the first 14 replays of the bench package on a fresh broker the end to end
    was 0.92-1.04 s at first and still falling at the 14th (medians of the other 13: 0.70
    and 0.71 s in two rounds); with C1 alone, 0.78-0.81 s at first, then medians of 0.61 and
    0.64 s. Raw consume is as fast (0.10 s)."""
    if jit == "c1":
        return ("-XX:TieredStopAtLevel=1",)
    if jit == "tiered":
        return ()
    raise BrokerError(f"broker JIT {jit!r} is not 'c1' or 'tiered'")


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted, started or stopped."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    log: Path

    def __str__(self) -> str:
        state = f"running (pid {self.pid})" if self.running else "stopped"
        return f"broker {state} at {self.bootstrap}; log {self.log}"


def roll_over(log: Path, keep: int) -> None:
    """``log`` to ``log.1``, ``log.1`` to ``log.2`` ... (the oldest beyond ``keep`` gone), as
    the broker's log4j does at TOCSIN_BROKER_LOG_MB; nothing if ``log`` is missing or
    empty."""
    if not log.exists() or log.stat().st_size == 0:
        return
    def rolled(i: int) -> Path:
        return log.with_name(f"{log.name}.{i}")

    extra = keep  # those beyond ``keep`` (kept when it was larger) go too
    while rolled(extra).exists():
        rolled(extra).unlink()
        extra += 1
    for i in range(keep - 1, 0, -1):
        if rolled(i).exists():
            rolled(i).rename(rolled(i + 1))
    log.rename(rolled(1))


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); look at its state
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class Broker:
    """Fetch, format, start, check and stop the single-node KRaft broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.broker_dir
        self.data_dir = self.dir / "data"
        self.log = self.dir / "broker.log"
        self.pid_file = self.dir / "broker.pid"
        self.host = "127.0.0.1"

    # ------------------------------------------------------------------ fetch
    def fetch(self) -> Path:
        """Copy the broker jars from Maven Central into the cache (once)."""
        libs = self.settings.kafka_libs
        marker = libs / f"kafka_2.13-{self.settings.kafka_version}.jar"
        if marker.exists():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven (mvn) is not on PATH; it is needed to fetch the Kafka jars")
        libs.parent.mkdir(parents=True, exist_ok=True)
        tmp = libs.with_name("libs.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-Dkafka.version={self.settings.kafka_version}",
            f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BrokerError(
                f"fetching Kafka {self.settings.kafka_version} with Maven failed "
                f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        if not marker.exists():
            raise BrokerError(f"Maven finished but {marker} is missing")
        return libs

    # ------------------------------------------------------------------ config
    def _properties(self) -> str:
        s = self.settings
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={self.host}:{s.controller_port}",
            f"listeners=PLAINTEXT://{self.host}:{s.broker_port},"
            f"CONTROLLER://{self.host}:{s.controller_port}",
            f"advertised.listeners=PLAINTEXT://{self.host}:{s.broker_port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={self.data_dir}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # tocsin creates its topics explicitly; faust declares its own internal ones
            "auto.create.topics.enable=false",
            "log.retention.hours=168",
            "message.max.bytes=8388608",
            "",
        ])

    def _java(self, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("java is not on PATH; Kafka needs Java 17")
        return [
            java, f"-Xmx{self.settings.broker_heap}", f"-Xms{self.settings.broker_heap}",
            *JVM_OPTS, *g1_region_opts(self.settings.broker_heap),
            *jit_opts(self.settings.broker_jit),
            f"-Dlog4j2.configurationFile={LOG4J}", f"-Dtocsin.broker.log={self.log}",
            # whole kB: log4j's FileSize takes no exponent ("1e+06 MB" fell back to 10 MB)
            f"-Dtocsin.broker.log.size={max(1, round(self.settings.broker_log_mb * 1024))} KB",
            f"-Dtocsin.broker.log.files={self.settings.broker_log_files}",
            "-cp", f"{self.settings.kafka_libs}/*", *args,
        ]

    def _format(self, config: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        proc = subprocess.run(
            # one token: a base64url id may start with "-" (1 in 64), which the tool's
            # argument parser took for an option ("expected one argument")
            self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                       "-c", str(config), "--standalone"),
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise BrokerError(f"formatting {self.data_dir} failed:\n{proc.stdout}{proc.stderr}")

    # ------------------------------------------------------------------ lifecycle
    def _pid(self) -> int | None:
        """The pid in the pid file if that process is this broker (a Kafka JVM on this
        directory's server.properties): after a SIGKILL or a reboot the file may name a
        process that has nothing to do with it, which ``stop`` would have killed."""
        try:
            pid: int | None = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and _pid_alive(pid) and self._is_ours(pid):
            return pid
        # the file lost or stale, the broker perhaps still running: found by its command
        # line (status said stopped, start found the port taken, stop left it running)
        found = self._find()
        if found is not None:
            self.pid_file.write_text(f"{found}\n")
        return found

    def _find(self) -> int | None:
        """A live process that is this broker, from /proc."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_ours(int(entry.name)) and _pid_alive(
                    int(entry.name)):
                return int(entry.name)
        return None

    def _is_ours(self, pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"kafka.Kafka" in argv and str(self.dir / "server.properties").encode() in argv

    def status(self) -> BrokerStatus:
        pid = self._pid()
        running = pid is not None and _port_open(self.host, self.settings.broker_port)
        return BrokerStatus(running, pid, self.settings.bootstrap, self.log)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The broker directory's lock: starts, stops and the users' leases, one at a time."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def start(self, timeout: float = 90.0) -> BrokerStatus:
        """Start the broker (fetching and formatting first if needed) and wait until ready;
        it runs until ``stop`` (``tocsin broker start``: commands that use it leave it
        running). Two starts at once: the second waits for the first (a lock on the
        directory) and finds it running."""
        with self._locked():
            st = self._start(timeout)
            self._on_demand.unlink(missing_ok=True)
            return st

    @property
    def _on_demand(self) -> Path:
        return self.dir / "on-demand"  # there while the broker runs for the commands' sake

    @contextlib.contextmanager
    def use(self, timeout: float = 90.0) -> Iterator[BrokerStatus]:
        """The broker for one command: started if it is not running, and then stopped when
        the last command using it is done, whichever that is (each holds a lease while it
        runs). Before, a command stopped the broker it had started when it ended, even if
        another command had begun to use it meanwhile. A broker started with :meth:`start`
        keeps running."""
        users = self.dir / "users"
        lease = users / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with self._locked():
            if not self.status().running:
                st = self._start(timeout)
                self._on_demand.touch()
            else:
                st = self.status()
            users.mkdir(exist_ok=True)
            lease.touch()
        try:
            yield st
        finally:
            with self._locked():
                lease.unlink(missing_ok=True)
                live = []
                for other in users.iterdir():
                    pid = other.name.partition("-")[0]
                    if pid.isdigit() and _pid_alive(int(pid)):
                        live.append(other)
                    else:  # a command that died without leaving
                        other.unlink(missing_ok=True)
                if not live and self._on_demand.exists():
                    self._stop()

    def _start(self, timeout: float) -> BrokerStatus:
        st = self.status()
        if st.running:
            return st
        if st.pid is not None:
            # ours and alive, but not serving: a start interrupted in its wait (Ctrl-C) left
            # it. Launching another orphaned it (the pid file named the new one only)
            if self._wait_ready(st.pid, self.pid_file.stat().st_mtime, timeout):
                return self.status()
            self._stop()
        if _port_open(self.host, self.settings.broker_port):
            raise BrokerError(
                f"port {self.settings.broker_port} on {self.host} is taken by another process; "
                "set TOCSIN_BROKER_PORT or TOCSIN_KAFKA_BOOTSTRAP"
            )
        if _port_open(self.host, self.settings.controller_port):
            # the JVM would exit after 4 s with "exited with code 1; see log"
            raise BrokerError(
                f"port {self.settings.controller_port} on {self.host} (the KRaft controller's) "
                "is taken by another process; set TOCSIN_CONTROLLER_PORT"
            )
        self.fetch()
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "server.properties"
        config.write_text(self._properties())
        # each launch (its storage format included) writes a log of its own; readiness is
        # read from it
        roll_over(self.log, self.settings.broker_log_files)
        launched = time.time()
        self._format(config)
        out = open(self.dir / "broker.out", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            self._java("kafka.Kafka", str(config)),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        self.pid_file.write_text(str(proc.pid))
        try:
            if self._wait_ready(proc.pid, launched, timeout, proc):
                return self.status()
        except BaseException:  # interrupted (Ctrl-C): not left running, unknown to all
            self._stop()
            raise
        self._stop()
        raise BrokerError(f"the broker was not ready after {timeout:.0f} s; see {self.log}")

    def _wait_ready(self, pid: int, launched: float, timeout: float,
                    proc: subprocess.Popen[bytes] | None = None) -> bool:
        """Whether the broker ``pid`` (launched at ``launched``) is ready within
        ``timeout``; BrokerError if it exits meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = proc.poll() if proc is not None else (None if _pid_alive(pid) else -1)
            if code is not None:
                raise BrokerError(
                    f"the broker exited with code {code} during start-up; "
                    f"see {self.log} and {self.dir / 'broker.out'}"
                )
            if _port_open(self.host, self.settings.broker_port) and self._ready(launched):
                return True
            time.sleep(0.3)
        return False

    def _ready(self, launched: float) -> bool:
        """The launch's log says the broker has started: ``broker.log``, and the logs it
        rolled over to since ``launched`` (a small TOCSIN_BROKER_LOG_MB)."""
        text = ""
        for path in [self.log, *(self.log.with_name(f"{self.log.name}.{i}")
                                 for i in range(1, self.settings.broker_log_files + 1))]:
            try:
                if path is not self.log and path.stat().st_mtime < launched:
                    break  # this one and the older ones are earlier launches'
                text = path.read_bytes().decode(errors="replace") + text
            except OSError:
                break
        text = text.split("Stopping socket server")[-1]
        return "Kafka Server started" in text or "started (kafka.server.KafkaRaftServer)" in text

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker, whoever started it (``tocsin broker stop``)."""
        with self._locked():
            self._stop(timeout)
            self._on_demand.unlink(missing_ok=True)

    def _stop(self, timeout: float = 30.0) -> None:
        pid = self._pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.2)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
