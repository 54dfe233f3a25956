"""nginx from the shipped deploy/nginx template, in front of replicas on loopback ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.net import free_port

TEMPLATE = Path(__file__).parents[2] / "deploy" / "nginx" / "chat-service.conf.template"

# What the official image's nginx.conf has around its conf.d/*.conf, with every path in the test's directory
# and one process (no user switch, nothing left running if the test dies).
MAIN = """
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log notice;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/conf.d/chat-service.conf;
}}
"""


def binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def render(template: str, values: dict[str, str]) -> str:
    """envsubst as the nginx image runs it: only the variables given (nginx's own `$name`s stay)."""
    for name, value in values.items():
        assert f"${{{name}}}" in template, f"the template does not use {name}"
        template = template.replace(f"${{{name}}}", value)
    return template


class Nginx:
    def __init__(self, root: Path, replicas: list[str]) -> None:
        found = binary()
        if found is None:
            raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
        self.binary = found
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        upstreams = " ".join(f"server {replica} max_fails=0;" for replica in replicas)  # as the template advises
        (root / "conf.d").mkdir(parents=True)
        (root / "conf.d" / "chat-service.conf").write_text(
            render(TEMPLATE.read_text(), {"PROXY_LISTEN": self.address, "PROXY_UPSTREAMS": upstreams})
        )
        (root / "nginx.conf").write_text(MAIN.format(root=root))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> None:
        command = [self.binary, "-p", str(self.root), "-c", str(self.root / "nginx.conf"), "-e", "stderr"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                assert self.process.stderr is not None
                with self.process.stderr:
                    raise AssertionError(f"nginx did not start: {self.process.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)  # polling the port until nginx listens (bounded above)
        raise AssertionError("nginx did not listen in time")

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                self.process.wait(10)
            if self.process.stderr is not None:
                self.process.stderr.close()
