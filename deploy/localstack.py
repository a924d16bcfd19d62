"""Starts and stops the real services the worker needs: an Apache Kafka broker and a PostgreSQL server, and
a Schema Registry (Apicurio Registry's Confluent-compatible API) for the tests and runs that ask for one.

This is the one place that knows how. `make run` (through deploy/demo.py), `make test` (through the
test fixtures) and a developer at a terminal (`python deploy/localstack.py up`) all use it.

Which services, in this order of preference:
1. `KAFKA_BOOTSTRAP_SERVERS` and/or `DATABASE_URL` set in the environment: used as they are, nothing
   is started for them.
2. A Docker engine answers and the `docker` extra is installed: testcontainers starts them.
3. Otherwise, local processes on 127.0.0.1 with free ports: Kafka in KRaft mode (one combined
   broker+controller) from Maven Central through deploy/kafka/pom.xml, and a throwaway PostgreSQL
   cluster made with the binaries of the installed server package (`pg_config --bindir`).

Everything started here is stopped and deleted on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEPLOY_DIR = Path(__file__).resolve().parent
KAFKA_POM = DEPLOY_DIR / "kafka" / "pom.xml"
KAFKA_LOG4J = DEPLOY_DIR / "kafka" / "log4j2.properties"
KAFKA_START_TIMEOUT_S = 120.0
REGISTRY_START_TIMEOUT_S = 90.0
# Apicurio Registry (Apache-2.0) serves the Confluent Schema Registry API at /apis/ccompat/v7; Maven Central
# publishes it ready to run as a Quarkus application.
APICURIO_VERSION = "2.6.13.Final"
APICURIO_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
REGISTRY_API = "/apis/ccompat/v7"
POSTGRES_START_TIMEOUT_S = 60.0
DATABASE_NAME = "backorder"


class StackError(RuntimeError):
    """A service could not be started; the message says which and where its log is."""


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap_servers: str
    database_url: str

    def environ(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers, "DATABASE_URL": self.database_url}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)  # a frozen process would not act on SIGTERM; a running one ignores this
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class _ChildServer:
    """A server run as a child process, which a test may freeze (SIGSTOP) and thaw (SIGCONT) as a partition."""

    _proc: subprocess.Popen[bytes] | None
    _stop_timeout_s = 20.0

    def freeze(self) -> None:
        """SIGSTOP: the server stops answering while its connections and port stay open, as in a network
        partition: every request times out."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (a frozen server is thawed first), SIGKILL if it has not exited within its timeout."""
        if self._proc is not None:
            _stop_process(self._proc, timeout_s=self._stop_timeout_s)
            self._proc = None


# --------------------------------------------------------------------------------------------- Kafka


def _die_with_parent() -> None:
    """In the broker's process, before exec: if whoever started it dies, even by SIGKILL, so does it."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "backorder-worker"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """One process at a time fetches `name` into the cache: `make test`'s two processes may each start a broker
    on a machine that has none yet, and two Mavens writing one ~/.m2 and one classpath file at once may fail."""
    with open(_cache_dir() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # let go when the file is closed
        yield


def _cached_classpath(cached: Path) -> str | None:
    if cached.exists():
        classpath = cached.read_text().strip()
        if classpath and all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
            return classpath
    return None


def kafka_classpath() -> str:
    """The broker's runtime classpath, resolved by Maven once and cached by the pom's content.

    The jars stay in Maven's own repository (~/.m2), so a second call downloads nothing.
    """
    digest = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()[:16]
    cached = _cache_dir() / f"kafka-classpath-{digest}.txt"
    if (classpath := _cached_classpath(cached)) is not None:
        return classpath
    with _cache_lock("kafka-classpath"):
        if (classpath := _cached_classpath(cached)) is not None:  # another process resolved it meanwhile
            return classpath
        return _resolve_kafka_classpath(cached)


def _resolve_kafka_classpath(cached: Path) -> str:
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is needed to fetch the Kafka broker; install it or set KAFKA_BOOTSTRAP_SERVERS")
    out = cached.with_suffix(".tmp")
    print(f"localstack: resolving the Kafka broker with Maven ({KAFKA_POM.name}) ...", file=sys.stderr)
    result = subprocess.run(
        [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(KAFKA_POM),
            "dependency:build-classpath",
            f"-Dmdep.outputFile={out}",
            "-Dmdep.includeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"Maven could not resolve the Kafka broker:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    out.replace(cached)
    return cached.read_text().strip()


# Groups of the KIP-848 protocol (which the worker's default, BACKORDER_GROUP_PROTOCOL=auto, takes on this broker) have
# their session and heartbeat from the broker: the worker's (10 s, 1 s) instead of Kafka's (45 s, 5 s), whose
# minimums are lowered to allow them.
CONSUMER_GROUP_SETTINGS = {
    "group.consumer.min.session.timeout.ms": "6000",
    "group.consumer.session.timeout.ms": "10000",
    "group.consumer.min.heartbeat.interval.ms": "1000",
    "group.consumer.heartbeat.interval.ms": "1000",
}


class KafkaBroker(_ChildServer):
    """One Kafka node in KRaft mode (broker and controller in one JVM) on 127.0.0.1."""

    _stop_timeout_s = 30.0

    def __init__(self, workdir: Path, heap: str = "1g", *, group_settings: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.heap = heap
        # KIP-848 groups' session bounds: the worker's (CONSUMER_GROUP_SETTINGS) unless given ({}: Kafka's own)
        self.group_settings = CONSUMER_GROUP_SETTINGS if group_settings is None else group_settings
        self.port = free_port()
        self.controller_port = free_port()
        self.log_path = workdir / "kafka.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _properties(self) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            # A single node: every internal topic must live with one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            **self.group_settings,
            "auto.create.topics.enable": "false",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def start(self) -> None:
        classpath = kafka_classpath()
        java = shutil.which("java")
        if java is None:
            raise StackError("Java 17 (java) is needed to run the Kafka broker")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "server.properties"
        config.write_text(self._properties())
        jvm = [
            java,
            f"-Xmx{self.heap}",
            "-Xms256m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
            "-cp",
            classpath,
        ]
        # A data directory formatted before is reused as it is: a broker restarted after kill() keeps its log.
        if not (self.workdir / "data" / "meta.properties").exists():
            # Kafka's own ids never start with "-" (the tool would read it as an option); nor do ours.
            cluster_id = "K" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[1:]
            formatted = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config)],
                capture_output=True,
                text=True,
                check=False,
            )
            if formatted.returncode != 0:
                raise StackError(f"kafka storage format failed:\n{formatted.stdout}\n{formatted.stderr}")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us, and we stop the broker in order
                preexec_fn=_die_with_parent,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        deadline = time.monotonic() + KAFKA_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise StackError(f"the Kafka broker exited with {self._proc.returncode}:\n{_log_tail(self.log_path)}")
            try:
                admin.list_topics(timeout=2)
                return
            except Exception:  # KafkaException until the broker answers
                time.sleep(0.25)
        self.stop()
        raise StackError(
            f"the Kafka broker did not answer within {KAFKA_START_TIMEOUT_S:.0f}s:\n{_log_tail(self.log_path)}"
        )

    def kill(self) -> None:
        """SIGKILL, as a crash would; the data directory stays, and start() brings the broker back on it."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=30)
            self._proc = None


# ------------------------------------------------------------------------------------ Schema Registry


def apicurio_jar() -> Path:
    """Apicurio Registry's runner jar: the distribution is fetched once by Maven into its own repository
    (~/.m2, like the Kafka broker's jars; 142 MB) and unpacked once into the cache."""
    target = _cache_dir() / f"apicurio-registry-{APICURIO_VERSION}"
    jar = target / f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
    if jar.exists():
        return jar
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is needed to fetch Apicurio Registry; install it or set a registry URL")
    with tempfile.TemporaryDirectory(prefix="apicurio-", dir=_cache_dir()) as tmp:
        print(f"localstack: fetching Apicurio Registry {APICURIO_VERSION} with Maven ...", file=sys.stderr)
        result = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
                f"-Dartifact={APICURIO_ARTIFACT}",
                f"-DoutputDirectory={tmp}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        archives = list(Path(tmp).glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise StackError(
                f"Maven could not fetch Apicurio Registry:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
            )
        unpacked = Path(tmp) / "unpacked"
        unpacked.mkdir()
        subprocess.run(["tar", "xzf", str(archives[0]), "-C", str(unpacked)], check=True)
        unpacked.replace(target)  # whole or not at all: the jar is there only once everything is
    return jar


class SchemaRegistryServer(_ChildServer):
    """Apicurio Registry on 127.0.0.1 with in-memory storage: what it holds is gone when it stops."""

    def __init__(self, workdir: Path, heap: str = "256m") -> None:
        self.workdir = workdir
        self.heap = heap
        self.port = free_port()
        self.log_path = workdir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The Confluent-compatible API, as a Schema Registry client wants it."""
        return f"http://127.0.0.1:{self.port}{REGISTRY_API}"

    def start(self) -> None:
        jar = apicurio_jar()
        java = shutil.which("java")
        if java is None:
            raise StackError("Java 17 (java) is needed to run Apicurio Registry")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    java,
                    f"-Xmx{self.heap}",
                    "-Dquarkus.http.host=127.0.0.1",
                    f"-Dquarkus.http.port={self.port}",
                    "-jar",
                    str(jar),
                ],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + REGISTRY_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise StackError(f"Apicurio Registry exited with {self._proc.returncode}:\n{_log_tail(self.log_path)}")
            if self.answers():
                return
            time.sleep(0.25)
        self.stop()
        raise StackError(
            f"Apicurio Registry did not answer within {REGISTRY_START_TIMEOUT_S:.0f}s:\n{_log_tail(self.log_path)}"
        )

    def answers(self) -> bool:
        """Ready: `GET /subjects` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:  # refused, reset, timed out, or an HTTP error (URLError and HTTPError are OSErrors)
            return False


# ----------------------------------------------------------------------------------------- Prometheus


def prometheus_bindir() -> Path:
    """Where `prometheus` and `promtool` of Debian's `prometheus` package are, fetched once and unpacked
    into the cache: the package is not installed, so no service is set up or started."""
    path = shutil.which("promtool")
    if path is not None and shutil.which("prometheus") is not None:
        return Path(path).parent
    target = _cache_dir() / "prometheus"
    bindir = target / "usr" / "bin"
    if (bindir / "promtool").exists() and (bindir / "prometheus").exists():
        return bindir
    with tempfile.TemporaryDirectory(prefix="backorder-prometheus-") as tmp:
        fetched = subprocess.run(
            ["apt-get", "download", "prometheus"], cwd=tmp, capture_output=True, text=True, check=False
        )
        if fetched.returncode != 0 and os.geteuid() == 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            fetched = subprocess.run(
                ["apt-get", "download", "prometheus"], cwd=tmp, capture_output=True, text=True, check=False
            )
        debs = list(Path(tmp).glob("prometheus_*.deb"))
        if fetched.returncode != 0 or not debs:
            raise StackError(f"could not fetch Debian's prometheus package: {fetched.stderr.strip()}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(target)], check=True)
    return bindir


class PrometheusServer(_ChildServer):
    """A Prometheus server on 127.0.0.1 that scrapes the given targets every second."""

    def __init__(self, workdir: Path, targets: list[str], rules: list[Path] | None = None) -> None:
        self.workdir = workdir
        self.targets = targets
        self.rules = rules or []
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        rule_files = "".join(f"  - {rule}\n" for rule in self.rules)
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            + (f"rule_files:\n{rule_files}" if rule_files else "")
            + "scrape_configs:\n  - job_name: backorder-worker\n    static_configs:\n"
            + f"      - targets: [{', '.join(repr(t) for t in self.targets)}]\n"
        )
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    str(prometheus_bindir() / "prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise StackError(f"Prometheus exited with {self._proc.returncode}:\n{_log_tail(self.log_path)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise StackError(f"Prometheus did not listen within 60s:\n{_log_tail(self.log_path)}")


# ----------------------------------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        bindir = Path(
            subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        )
        if (bindir / "initdb").exists():
            return bindir
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if candidates:
        return candidates[0].parent
    raise StackError("no PostgreSQL server binaries found (initdb); install postgresql or set DATABASE_URL")


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1, trust authentication, durability off for speed
    (`durable=True`: fsync, synchronous_commit and full_page_writes on, as in production; for the bench).

    As root (CI, containers) the server runs as the `postgres` system user, since PostgreSQL refuses
    to run as root.
    """

    def __init__(self, workdir: Path, *, durable: bool = False) -> None:
        self.workdir = workdir
        self.durable = durable
        self.port = free_port()
        self.datadir = workdir / "pgdata"
        self.log_path = workdir / "postgres.log"
        self.bindir = _pg_bindir()
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE_NAME}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _chown(self, path: Path) -> None:
        if self._as_postgres:
            shutil.chown(path, "postgres", "postgres")
            # The server user must be able to reach its directory through a root-owned temp folder.
            path.parent.chmod(path.parent.stat().st_mode | 0o011)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._chown(self.workdir)
        if not self.datadir.exists():
            init = self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            )
            if init.returncode != 0:
                raise StackError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        durability = "on" if self.durable else "off"
        options = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync={durability} "
            f"-c synchronous_commit={durability} -c full_page_writes={durability} -c max_connections=200"
        )
        started = self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(int(POSTGRES_START_TIMEOUT_S)),
            "start",
        )
        if started.returncode != 0:
            raise StackError(f"PostgreSQL did not start:\n{started.stdout}\n{_log_tail(self.log_path)}")
        self._ensure_database()

    def _ensure_database(self) -> None:
        psql = [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tAq"]
        exists = self._run(*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'")
        if exists.stdout.strip() != "1":
            created = self._run(*psql, "-c", f"CREATE DATABASE {DATABASE_NAME}")
            if created.returncode != 0:
                raise StackError(f"could not create the database: {created.stderr}")

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m MODE`: `fast` rolls back and stops cleanly; `immediate` aborts, as a crash would."""
        if (self.datadir / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")


# --------------------------------------------------------------------------------------------- stack


def prepare_worker(env: dict[str, str], *, quiet: bool = False) -> None:
    """Apply the migrations and create the topics, as an operator would before starting workers."""
    worker = [sys.executable, "-m", "worker"]
    for step in ("migrate", "topics"):
        subprocess.run([*worker, step], env=env, cwd=DEPLOY_DIR.parent, check=True, capture_output=quiet)


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def _containers(need_kafka: bool, need_postgres: bool) -> Iterator[tuple[str | None, str | None]]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with contextlib.ExitStack() as stack:
        bootstrap = url = None
        if need_kafka:
            container = KafkaContainer("apache/kafka:4.1.1").with_kraft()
            for key, value in CONSUMER_GROUP_SETTINGS.items():
                container.with_env(f"KAFKA_{key.upper().replace('.', '_')}", value)
            kafka = stack.enter_context(container)
            bootstrap = kafka.get_bootstrap_server()
        if need_postgres:
            pg = stack.enter_context(PostgresContainer("postgres:15", dbname=DATABASE_NAME, driver=None))
            url = pg.get_connection_url()
        yield bootstrap, url


@contextlib.contextmanager
def local_stack(workdir: Path | None = None, *, durable_postgres: bool = False) -> Iterator[Endpoints]:
    """Yields where Kafka and PostgreSQL answer; stops whatever it started on the way out.

    `durable_postgres`: a PostgreSQL started here runs with production durability (see PostgresServer)."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database_url = os.environ.get("DATABASE_URL")
    with contextlib.ExitStack() as stack:
        if (bootstrap is None or database_url is None) and docker_answers():
            try:
                started = stack.enter_context(_containers(bootstrap is None, database_url is None))
                bootstrap = bootstrap or started[0]
                database_url = database_url or started[1]
            except ImportError:
                print(
                    "localstack: Docker answers but the 'docker' extra is not installed; starting local processes",
                    file=sys.stderr,
                )
        if bootstrap is None or database_url is None:
            root = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="backorder-stack-")))
            if database_url is None:
                postgres = PostgresServer(root / "postgres", durable=durable_postgres)
                stack.callback(postgres.stop)
                postgres.start()
                database_url = postgres.url
            if bootstrap is None:
                broker = KafkaBroker(root / "kafka")
                stack.callback(broker.stop)
                started_at = time.monotonic()
                broker.start()
                print(
                    f"localstack: Kafka broker ready at {broker.bootstrap_servers} "
                    f"in {time.monotonic() - started_at:.1f}s",
                    file=sys.stderr,
                )
                bootstrap = broker.bootstrap_servers
        yield Endpoints(kafka_bootstrap_servers=bootstrap, database_url=database_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start Kafka and PostgreSQL, print their addresses, stop them on Ctrl-C")
    exec_parser = sub.add_parser(
        "exec",
        help="start the stack, run a command with its addresses in the environment, then stop the stack",
    )
    exec_parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    # Set both explicitly: a shell that starts us in the background may have set SIGINT to "ignore".
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        with local_stack() as endpoints:
            if args.command == "up":
                for key, value in endpoints.environ().items():
                    print(f"export {key}={value}")
                sys.stdout.flush()
                print("localstack: running; Ctrl-C stops and deletes everything", file=sys.stderr)
                while not stopping:
                    time.sleep(1)
                return 0
            cmd = [c for c in args.cmd if c != "--"]
            if not cmd:
                parser.error("exec needs a command")
            return subprocess.run(cmd, env={**os.environ, **endpoints.environ()}, check=False).returncode
    except KeyboardInterrupt:
        return 130
    except StackError as exc:
        print(f"localstack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
