"""The four services as child processes, for the system test, benchmarks and fault drills.

Unlike ``mess-dev up`` (which leaves them running for a developer), a
``Pipeline`` belongs to its caller: it starts the services on free ports
against the endpoints it is given, can kill -9 and restart any of them, and
stops them all when closed.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mess.dev.stack import SERVICES, free_port, process_alive, wait_for


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        module = SERVICES[self.name][0]
        log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", module],
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log_file.close()
        self.starts += 1

    def wait_live(self, timeout: float = 120.0) -> None:
        def live() -> bool:
            if self.process is None or self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} exited during start-up; log tail:\n{tail}")
            return httpx.get(f"{self.url}/health/live", timeout=2).status_code == 200

        wait_for(live, f"{self.name} service", timeout=timeout)

    def kill(self) -> None:
        """kill -9: no shutdown hook runs, in-flight work is simply lost."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None and process_alive(self.process.pid)


@dataclass
class Pipeline:
    stack_env: Mapping[str, str]
    log_dir: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # Variables for one service only (its own Kafka principal, say), over the rest.
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in SERVICES}
        port_env = {SERVICES[name][1]: str(port) for name, port in ports.items()}
        # Search by clip: the query service calls the embedder wherever this pipeline put it.
        port_env["MESS_QUERY_EMBEDDER_URL"] = f"http://127.0.0.1:{ports['embedder']}"
        base = {**os.environ, **self.stack_env, **port_env, **self.extra_env}
        for name, port in ports.items():
            env = {**base, **self.service_env.get(name, {})}
            self.services[name] = ServiceProcess(name, port, env, self.log_dir / f"{name}.log")

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    def start(self, *names: str) -> None:
        chosen = names or tuple(self.services)
        for name in chosen:
            self.services[name].start()
        for name in chosen:
            self.services[name].wait_live()

    def restart(self, name: str) -> None:
        self.services[name].kill()
        self.services[name].start()
        self.services[name].wait_live()

    def close(self) -> None:
        for service in self.services.values():
            service.stop()

    def logs(self, name: str, tail: int = 4000) -> str:
        return self.services[name].log_path.read_text(errors="replace")[-tail:]

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
