"""Real servers on 127.0.0.1 for tests and local stacks: SecantusDB (MongoDB wire protocol)
and SeaweedFS (S3 API), each a child process on free ports with its data and log under one
directory.

Plain functions and classes, no pytest: `tests/servers_plugin.py` uses them for fixtures, a
stack script can use them directly::

    mongo = start_mongo(Path(".stack/mongo"))
    s3 = start_s3(Path(".stack/s3"))
    ...
    mongo.kill(); mongo.start()   # a crash and a restart: same port, same data
    s3.stop(); mongo.stop()

Every server started here is killed when the interpreter exits, should the caller forget.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # Run as `python tests/servers.py`, sys.path[0] is tests/, whose queue/ package would
    # shadow the standard library's `queue` (urllib3 and pymongo need it): look from the
    # repository root instead, as `python -m tests.servers` does.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "MongoServer",
    "S3Server",
    "ServerError",
    "ServerProcess",
    "free_ports",
    "start_mongo",
    "start_s3",
    "wait_port",
]

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
_PROBE_BUCKET = "readiness-probe"
_live: set[ServerProcess] = set()


class ServerError(RuntimeError):
    """A server could not be found, started or reached."""


def _binary(name: str) -> str:
    """The executable in this interpreter's venv, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise ServerError(f"{name} is not installed (pip install the dev extras)")
    return found


def _die_with_parent_hook() -> Callable[[], None] | None:
    """For Popen's preexec_fn: the child gets SIGTERM when this process dies, even by SIGKILL
    (Linux PR_SET_PDEATHSIG), so no server outlives the tests or script that started it. Only
    from the main thread: the signal follows the thread that forked, not the process."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return hook


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _free_port_pair(offset: int) -> int:
    """A free port `p` with `p + offset` free too (for servers that derive a second port)."""
    for _ in range(100):
        (port,) = free_ports(1)
        if port + offset <= 65535 and _port_is_free(port + offset):
            return port
    raise ServerError(f"no free port pair {offset} apart")


def wait_port(
    port: int,
    host: str = HOST,
    *,
    timeout: float = START_TIMEOUT,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Wait until something accepts TCP connections on host:port (while `alive()` holds)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        if not alive():
            raise ServerError(f"the server for {host}:{port} exited")
        if time.monotonic() > deadline:
            raise ServerError(f"nothing listens on {host}:{port} after {timeout:.0f} s")
        time.sleep(0.05)


class ServerProcess:
    """A server child process that can be stopped (politely or by a kill, as in a crash) and
    started again with the same command line: the same ports, the same data."""

    def __init__(self, name: str, argv: list[str], data_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.data_dir = data_dir
        self.log_path = data_dir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (if stopped) and return once it serves requests."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.argv,
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C is for us, not them
            preexec_fn=_die_with_parent_hook(),
        )
        _live.add(self)
        try:
            self.wait_ready(time.monotonic() + START_TIMEOUT)
        except BaseException:
            self.kill()
            raise

    def wait_ready(self, deadline: float) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait for a clean exit; SIGKILL after `timeout` seconds."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: what a crash or a power cut looks like to the clients. Instant."""
        self._end(signal.SIGKILL, 15.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, signum: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signum)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        _live.discard(self)
        self.cleanup()

    def cleanup(self) -> None:
        """Remove what the server leaves behind outside its data directory."""

    def _check_alive(self) -> None:
        if not self.running:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ServerError(f"{self.name} exited; end of {self.log_path}:\n{tail}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class MongoServer(ServerProcess):
    """SecantusDB speaking the MongoDB wire protocol."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.port = port
        self.url = f"mongodb://{HOST}:{port}"
        # An empty config file: otherwise ./, ~/.secantus/ or /etc/secantus/secantusd.toml
        # would be read, whatever they say.
        config = data_dir / "secantusd.toml"
        super().__init__(
            "secantusd",
            [
                _binary("secantusd-py"),
                "--config",
                str(config),
                "--host",
                HOST,
                "--port",
                str(port),
                "--storage-path",
                str(data_dir / "db"),
                "--cache-size",
                "128M",
            ],
            data_dir,
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        config.touch()

    def wait_ready(self, deadline: float) -> None:
        import pymongo

        wait_port(self.port, timeout=deadline - time.monotonic(), alive=lambda: self.running)
        client: pymongo.MongoClient[dict[str, Any]]
        with pymongo.MongoClient(self.url, serverSelectionTimeoutMS=1000) as client:
            while True:
                self._check_alive()
                try:
                    client.admin.command("ping")
                    return
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        raise


class S3Server(ServerProcess):
    """SeaweedFS in `weed mini` mode: master, volume, filer and S3 gateway in one process."""

    region = "us-east-1"

    def __init__(self, data_dir: Path, port: int, *, access_key: str, secret_key: str) -> None:
        self.port = port
        self.endpoint = f"{HOST}:{port}"
        self.url = f"http://{self.endpoint}"
        self.access_key = access_key
        self.secret_key = secret_key
        s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = free_ports(7)
        # Its background worker dials the admin gRPC port at admin port + 10000, whatever
        # -admin.port.grpc says, so keep that pair.
        admin = _free_port_pair(10000)
        self._grpc_ports = [s3_grpc, master_grpc, volume_grpc, filer_grpc, admin + 10000]
        identity = {
            "name": "test",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config = data_dir / "s3.json"
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "weed").mkdir(exist_ok=True)
        config.write_text(json.dumps({"identities": [identity]}))
        super().__init__(
            "weed",
            [
                _binary("weed"),
                "mini",
                f"-ip={HOST}",
                f"-ip.bind={HOST}",
                f"-dir={data_dir / 'weed'}",
                f"-s3.config={config}",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                # Each bucket takes a volume of its own; small volumes leave room for many buckets.
                "-master.volumeSizeLimitMB=32",
                f"-s3.port={port}",
                f"-s3.port.grpc={s3_grpc}",
                f"-master.port={master}",
                f"-master.port.grpc={master_grpc}",
                f"-volume.port={volume}",
                f"-volume.port.grpc={volume_grpc}",
                f"-filer.port={filer}",
                f"-filer.port.grpc={filer_grpc}",
                f"-admin.port={admin}",
                f"-admin.port.grpc={admin + 10000}",
                f"-filer.localSocket={data_dir / 'filer.sock'}",
                f"-s3.localSocket={data_dir / 's3.sock'}",
            ],
            data_dir,
        )

    def client(self) -> S3Client:
        """A plain boto3 S3 client for this server (for checks outside the code under test)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=1,
                read_timeout=10,
                retries={"max_attempts": 1, "mode": "standard"},
            ),
        )

    def wait_ready(self, deadline: float) -> None:
        """Until an object can be written and read back. The S3 port opens before the filer
        behind it, and after a restart the master learns the existing volumes only from the
        volume server's first heartbeat: until then, reads of old objects fail with
        InternalError. A write needs that heartbeat too, so a working write means all is back.
        """
        wait_port(self.port, timeout=deadline - time.monotonic(), alive=lambda: self.running)
        client = self.client()
        while True:
            self._check_alive()
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=_PROBE_BUCKET)
                client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=b"ok")
                client.get_object(Bucket=_PROBE_BUCKET, Key="probe")["Body"].read()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def cleanup(self) -> None:
        # A killed weed leaves its gRPC unix sockets in /tmp (a clean stop removes them).
        for name in ("s3", "master", "volume", "filer", "admin"):
            for port in self._grpc_ports:
                Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)


def start_mongo(data_dir: Path, port: int | None = None) -> MongoServer:
    """A running SecantusDB on 127.0.0.1 (a free port unless given), data under `data_dir`."""
    server = MongoServer(data_dir, port or free_ports(1)[0])
    server.start()
    return server


def start_s3(
    data_dir: Path,
    port: int | None = None,
    *,
    access_key: str = "smap-test",
    secret_key: str = "smap-test-secret",
) -> S3Server:
    """A running SeaweedFS S3 gateway on 127.0.0.1 (a free port unless given)."""
    server = S3Server(
        data_dir, port or free_ports(1)[0], access_key=access_key, secret_key=secret_key
    )
    server.start()
    return server


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        server.kill()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """`python tests/servers.py [DIR]`: both servers until Ctrl-C or SIGTERM, then both
    stopped cleanly (and killed with this process should it be killed itself)."""
    signal.signal(signal.SIGTERM, _interrupt)  # a supervisor's stop is a Ctrl-C
    root = Path(argv[0] if argv else ".test-data/servers").resolve()
    started: list[ServerProcess] = []
    try:
        mongo = start_mongo(root / "mongo")
        started.append(mongo)
        s3 = start_s3(root / "s3")
        started.append(s3)
        print(f"MONGODB_URL={mongo.url}")
        print(
            f"MINIO_ENDPOINT={s3.endpoint} MINIO_ACCESS_KEY={s3.access_key} "
            f"MINIO_SECRET_KEY={s3.secret_key}",
            flush=True,
        )
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stop in peace
        for server in reversed(started):
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
