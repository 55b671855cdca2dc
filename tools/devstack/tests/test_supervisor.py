"""ProcessSupervisor runs real child processes, waits for readiness, kills and restarts them."""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from civicsignals.devstack.ports import free_port
from civicsignals.devstack.supervisor import ProcessSupervisor, ProcessSupervisorError

CHILD = textwrap.dedent(
    """
    import http.server, os, signal, subprocess, sys
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("GRANDCHILD"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("grandchild", child.pid, flush=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"pid={os.getpid()} greeting={os.environ.get('GREETING')}".encode()
            self.send_response(200 if self.path == "/readyz" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = int(os.environ["CHILD_PORT"])
    print("listening on", port, flush=True)
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def _child(port: int, **extra: str) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-c", CHILD], {"CHILD_PORT": str(port), **extra}


def test_start_ready_kill_and_start_again(tmp_path: Path) -> None:
    port = free_port()
    argv, env = _child(port, GREETING="hallo")
    with ProcessSupervisor(tmp_path / "logs") as sup:
        first = sup.start("web", argv, env=env)
        sup.wait_http_ready("web", f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert sup.is_running("web") and sup.pid("web") == first
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").text == f"pid={first} greeting=hallo"
        assert "listening on" in sup.log_tail("web")
        assert sup.log_file("web") == (tmp_path / "logs" / "web.log").resolve()

        with pytest.raises(ProcessSupervisorError, match="already running"):
            sup.start("web")

        assert sup.kill("web") == -signal.SIGKILL
        assert not sup.is_running("web") and sup.returncode("web") == -signal.SIGKILL
        assert sup.exited() == {"web": -signal.SIGKILL}

        second = sup.start("web")  # same spec as before
        assert second != first
        sup.wait_http_ready("web", f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").text == f"pid={second} greeting=hallo"
        # The log keeps both runs; the tail quoted in errors covers only the latest one.
        assert sup.log_file("web").read_text().count("listening on") == 2
        assert sup.log_tail("web").count("listening on") == 1

        codes = sup.stop_all(timeout=5)
    assert codes["web"] == -signal.SIGTERM
    assert not sup.is_running("web")


async def test_wait_ready_async_and_early_exit(tmp_path: Path) -> None:
    port = free_port()
    argv, env = _child(port)
    with ProcessSupervisor(tmp_path / "logs") as sup:
        sup.start("web", argv, env=env)
        await sup.wait_http_ready_async("web", f"http://127.0.0.1:{port}/readyz", timeout=10)

        sup.start("broken", [sys.executable, "-c", "import sys; print('config missing'); sys.exit(3)"])
        started = time.monotonic()
        with pytest.raises(ProcessSupervisorError, match="code 3") as err:
            sup.wait_http_ready("broken", f"http://127.0.0.1:{free_port()}/readyz", timeout=20)
        assert "config missing" in str(err.value)
        assert time.monotonic() - started < 5  # it fails fast, not at the timeout


def test_not_ready_times_out_with_log(tmp_path: Path) -> None:
    port = free_port()
    argv, env = _child(port)
    with ProcessSupervisor(tmp_path / "logs") as sup:
        sup.start("web", argv, env=env)
        with pytest.raises(ProcessSupervisorError, match="not ready") as err:
            sup.wait_http_ready("web", f"http://127.0.0.1:{port}/nope", timeout=1)
        assert "HTTP 404" in str(err.value)


def test_a_slow_start_is_reported_while_it_is_waited_for(tmp_path: Path) -> None:
    """A service that logs what it does and takes a while (the classifier building its cold-start
    model on a fresh ``make run``) is reported with its last log line, then found ready."""
    port = free_port()
    slow = "import time; print('building the cold-start model', flush=True); time.sleep(1.5)\n" + CHILD
    reports: list[tuple[float, str]] = []
    with ProcessSupervisor(tmp_path / "logs") as sup:
        sup.start("slow", [sys.executable, "-c", slow], env={"CHILD_PORT": str(port)})
        sup.wait_http_ready(
            "slow",
            f"http://127.0.0.1:{port}/readyz",
            timeout=20,
            still_waiting=lambda waited, line: reports.append((waited, line)),
            report_every=0.4,
        )
    assert reports, "a start of 1.5 s with reports every 0.4 s was never reported"
    assert all(waited >= 0.4 for waited, _ in reports)
    assert reports[0][1] == "building the cold-start model"


def _gone_or_zombie(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_stop_escalates_to_sigkill_and_takes_the_group(tmp_path: Path) -> None:
    port = free_port()
    argv, env = _child(port, IGNORE_TERM="1", GRANDCHILD="1")
    sup = ProcessSupervisor(tmp_path / "logs", stop_timeout=0.5)
    sup.start("stubborn", argv, env=env)
    sup.wait_http_ready("stubborn", f"http://127.0.0.1:{port}/readyz", timeout=10)
    grandchild = int(sup.log_tail("stubborn").split("grandchild ")[1].split()[0])

    started = time.monotonic()
    assert sup.stop_all() == {"stubborn": -signal.SIGKILL}
    assert time.monotonic() - started < 3
    deadline = time.monotonic() + 3
    while not _gone_or_zombie(grandchild):
        assert time.monotonic() < deadline, "grandchild survived its group"
        time.sleep(0.05)
