"""What the benchmarks that run a handler as a process share: ports for the servers they start, waiting
for those servers, and the small parent a memory measurement's child is started from."""

from __future__ import annotations

import socket
import time

# Runs its arguments as a child, passing its output through: a small parent for a memory measurement
# (Linux carries a parent's peak RSS over into a child's ru_maxrss when the child is spawned directly
# from a large process).
FRESH = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")
