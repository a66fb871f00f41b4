"""`nl2sql serve` in a subprocess for the tests: the real service (uvicorn, its signal handling, its query log),
around the bundled model (`nl2sql serve`, the CLI) or a scripted one that takes its time
(`python tests/serving.py PORT SECONDS SQL...`: nl2sql.server.serve with a SlowScripted generator).
Settings come from the environment, as for `nl2sql serve`."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from nl2sql.batching import check_cancelled
from nl2sql.generate import ScriptedGenerator

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, wait: float = 120) -> None:
    """Until GET `url` answers 200. If `proc` exits first, or `wait` seconds pass (then it is killed, not left
    running), the test fails with the end of its output `log`."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            what = f"exited with status {proc.returncode}" if proc.poll() is not None else f"was not up in {wait:g} s"
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise AssertionError(f"{' '.join(map(str, proc.args[1:4]))} {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


class SlowScripted(ScriptedGenerator):
    """Writes each queued answer (cycling through them) over `seconds`, checking the cancel scope every 10 ms as
    the batcher does between decoding steps. When a question reaches the model `started` is set and 'generating N'
    printed (a test of a subprocess waits for that line); `cancelled` is set when its work was stopped."""

    def __init__(self, outputs, seconds: float):
        super().__init__(outputs)
        self.seconds, self.calls = seconds, 0
        self.started, self.cancelled = threading.Event(), threading.Event()

    def candidates(self, *args, **kw):
        self.calls += 1
        self.started.set()
        print(f"generating {self.calls}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + self.seconds
        try:
            while time.monotonic() < deadline:
                time.sleep(0.01)
                check_cancelled()
        except BaseException:
            self.cancelled.set()
            raise
        self.outputs.append(self.outputs[0])  # the same question again after a restart gets the same answer
        return super().candidates(*args, **kw)


class ServeProcess:
    """One `nl2sql serve` process on a free port; `log` collects its output. stop() with a signal, start() again on
    the same port and query log (a restart)."""

    def __init__(self, tmp_path: Path, env: dict, scripted: tuple[float, list[str]] | None = None):
        self.port, self.tmp_path, self.scripted = free_port(), tmp_path, scripted
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "NL2SQL_THREADS": "1", **env}
        self.proc, self.starts = None, 0

    @property
    def log(self) -> Path:
        return self.tmp_path / f"serve-{self.starts}.log"

    def start(self, wait: float = 120) -> "ServeProcess":
        self.starts += 1
        if self.scripted:
            seconds, outputs = self.scripted
            cmd = [sys.executable, str(Path(__file__).resolve()), str(self.port), str(seconds), *outputs]
        else:
            cmd = [sys.executable, "-m", "nl2sql.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_until_up(self.url + "/health", self.proc, self.log, wait)
        return self

    def wait_for(self, text: str, wait: float = 600) -> None:
        """Until the server's output holds `text` (e.g. 'generating 1')."""
        deadline = time.monotonic() + wait
        while text not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from nl2sql serve:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def ask_in_background(self, question: str, **client_kw) -> tuple[threading.Thread, dict]:
        """Client(url, **client_kw).ask(question) on a started thread; its dict gets 'answer', or 'error' (what
        was raised, for the test to look at)."""
        from nl2sql.client import Client
        out: dict = {}

        def ask():
            try:
                out["answer"] = Client(self.url, **client_kw).ask(question)
            except Exception as e:  # noqa: BLE001
                out["error"] = e
        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        return thread, out

    def stop(self, sig=signal.SIGTERM, wait: float = 30) -> float:
        """Send `sig`; the seconds until the process was gone."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"nl2sql serve ignored {sig!r} for {wait} s")
        return time.monotonic() - t0


def main(argv: list[str]) -> None:
    from nl2sql.server import serve
    port, seconds, outputs = int(argv[0]), float(argv[1]), argv[2:]
    serve("127.0.0.1", port, generator=SlowScripted(outputs, seconds))


if __name__ == "__main__":
    main(sys.argv[1:])
