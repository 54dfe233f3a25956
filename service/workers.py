"""`chat-service serve --workers N`: N serving processes on one port, one per core.

One event loop per process is the service's model; a box with more cores runs more processes. Each worker is
a full replica (its own lease owner id `<replica id>/w<n>`, its own database pool and flusher), exactly as if
it ran on another machine, and the kernel spreads new connections between them (`SO_REUSEPORT`). This process
only supervises: it starts the workers, passes SIGTERM/SIGINT on, restarts a worker that dies unexpectedly
(the others serve meanwhile), and exits when all have stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from service.settings import Settings

logger = logging.getLogger(__name__)

RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0)


def worker_environment(settings: Settings, index: int) -> dict[str, str]:
    """What makes worker `index` a replica of its own on the shared port."""
    env = {
        **os.environ,
        "CHAT_WORKERS": "1",
        "CHAT_REUSE_PORT": "true",
        "CHAT_LISTEN": settings.listen,
        "CHAT_DATABASE_URL": settings.database_url,
        "CHAT_LLM_PROVIDER": settings.llm_provider,
        "CHAT_LLM_URL": settings.llm_url,
        "CHAT_DEFAULT_MODEL": settings.default_model,
        "CHAT_REPLICA_ID": f"{settings.resolved_replica_id}/w{index}",
    }
    if settings.metrics_port:  # one /metrics per worker, on consecutive ports
        env["CHAT_METRICS_PORT"] = str(settings.metrics_port + index)
    return env


def supervise(settings: Settings) -> int:
    """Run `settings.workers` copies of `chat-service serve` (configured through the environment, with what the
    command line said resolved into it) until told to stop; the exit status is the first non-zero one a worker
    stopped with, else 0."""
    command = [sys.executable, "-m", "service", "serve"]
    workers: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in workers.values():
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(settings.workers):
        workers[index] = subprocess.Popen(command, env=worker_environment(settings, index))
    restarts = dict.fromkeys(workers, 0)
    status = 0
    while workers:
        time.sleep(0.2)
        for index, process in list(workers.items()):
            code = process.poll()
            if code is None:
                continue
            if stopping or code == 0:
                status = status or code
                del workers[index]
                continue
            delay = RESTART_BACKOFF[min(restarts[index], len(RESTART_BACKOFF) - 1)]
            logger.error("worker %d exited with %d; restarting it in %.1fs", index, code, delay)
            restarts[index] += 1
            time.sleep(delay)
            if not stopping:
                workers[index] = subprocess.Popen(command, env=worker_environment(settings, index))
    return status
