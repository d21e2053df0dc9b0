"""A Debian 12 booted by systemd-nspawn with systemd as its PID 1, driven from outside by nsenter.

This machine's own PID 1 is not systemd; the container's is, so units, notify, the watchdog,
reload and the journal are systemd's own. The tree comes from tests/systemd/tree.sh (cached);
`-x` boots a throwaway copy of it, so every boot starts clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root"]


def build_tree() -> Path:
    result = subprocess.run(
        ["sh", str(HERE / "tree.sh")], capture_output=True, text=True, timeout=1800, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"tree.sh failed: {result.stderr.strip()}")
    tree = Path(result.stdout.strip())
    _clean_leftovers(tree.parent)
    return tree


def _clean_leftovers(cache: Path) -> None:
    """Throwaway copies that `-x` leaves behind when systemd-nspawn itself is killed (a run cut
    short), after an hour; and debootstrap logs of trees that are gone."""
    for leftover in cache.glob(".#*machine.*"):
        if time.time() - leftover.stat().st_mtime > 3600:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    trees = {p.name.removeprefix("bookworm-") for p in cache.glob("bookworm-*")}
    for log in cache.glob("debootstrap-*.log"):
        if log.stem.removeprefix("debootstrap-") not in trees:
            log.unlink(missing_ok=True)


@dataclass
class Container:
    tree: Path
    binds: list[tuple[Path, str]] = field(default_factory=list)  # read-only host dir → path
    proc: subprocess.Popen[bytes] | None = None
    leader: int = 0
    log: Path | None = None

    def boot(self, log: Path, timeout: float = 180) -> None:
        self.log = log
        argv = ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "-x", "-D", str(self.tree)]
        argv += ["--private-network", "-b"]
        argv += [f"--bind-ro={host}:{inside}" for host, inside in self.binds]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no container init after {timeout}s: {self.tail()}")
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                try:
                    if child.name() == "systemd":
                        self.leader = child.pid
                        break
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.2)
        # running, or degraded when some unit of the minimal tree fails: either is booted.
        # Until the container's systemd listens, systemctl cannot ask it: try again.
        while True:
            state = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout)
            if state.stdout.strip() in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"boot ended {state.stdout.strip()!r} ({state.stderr.strip()}): {self.tail()}"
                )
            time.sleep(0.5)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log else ""

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 120, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run script with sh inside the container (all its namespaces, a clean environment)."""
        argv = ["nsenter", "-t", str(self.leader), "-a", *ENV, "sh", "-c", script]
        result = subprocess.run(
            argv,
            input=stdin.decode() if stdin is not None else None,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the container: {script!r} exited {result.returncode}\n"
                f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
            )
        return result

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        self.sh(
            f"cat > {shlex.quote(path)} && chmod {mode:o} {shlex.quote(path)}", stdin=text.encode()
        )

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {shlex.quote(unit)} -p {','.join(props)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def json(self, script: str) -> object:
        return json.loads(self.sh(script).stdout)

    def wait(self, what: str, predicate: object, timeout: float = 90, every: float = 0.3) -> None:
        """Poll predicate() (a callable) until true; fail naming what was awaited, with the end
        of the container's journal (what a failure under load needs to be told apart)."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}\n{self.journal_tail()}"
                )
            time.sleep(every)

    def journal_tail(self, lines: int = 60) -> str:
        """The container's last journal lines, whatever unit wrote them."""
        tail = self.sh(f"journalctl -n {lines} --no-pager -o short-monotonic", check=False)
        return f"journal (last {lines} lines):\n{tail.stdout[-8000:]}"

    def shutdown(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None and self.leader:
            # SIGRTMIN+15 to the container's systemd: power off at once (the copy is thrown away)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGRTMIN + 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
