"""`python -m influx_backupd ARGS` as a real process, started from a fork server.

Most of the suite's CPU went to the interpreters of our CLI's processes (some 2,800 a run, 0.3 CPU
s each, two thirds of it importing the package). Each pytest worker keeps one server process
that has imported the package once and forks a child per call: the child is a process of its own
(its own pid, exit status, signals, files, umask, environment, working dir and stdio pipes) that
runs the same `main()` `python -m influx_backupd` runs, and ends the way the interpreter would
(non-daemon threads joined, atexit handlers, streams flushed). What only a fresh interpreter can
show is left to one: a call whose environment changes how Python starts (PYTHON*, LC_*, LANG), an
argv with raw bytes, a busy server, and every call when INFLUX_BACKUPD_TESTS_EXEC=1 is set, run
`sys.executable -m influx_backupd` as before; so do the suite's Popen-based tests, ptys, shells
and the systemd tests. tests/system/test_cli_process.py holds the two paths to the same output."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# what Python reads once as it starts: a call that changes one needs an interpreter of its own
_STARTUP_KEYS = ("PYTHON", "LC_", "LANG")
_UNBUFFERED = "PYTHONUNBUFFERED"  # the child makes its streams as Python would with it
_EXEC_ALWAYS = "INFLUX_BACKUPD_TESTS_EXEC"
_MAX_MESSAGE = 1 << 20


def run_cli_process(
    argv: Sequence[str | bytes],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    umask: int | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """What `subprocess.run([sys.executable, "-m", "influx_backupd", *argv], capture_output=True,
    text=True, ...)` returns, from a forked child where nothing tells the two apart."""
    full_env = dict(os.environ if env is None else env)
    server = _server_for(full_env, argv)
    if server is None:
        return subprocess.run(
            [sys.executable, "-m", "influx_backupd", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            umask=-1 if umask is None else umask,
            cwd=cwd,
            stdin=stdin,
        )
    try:
        return server.run(
            [str(a) for a in argv],
            env=full_env,
            timeout=timeout,
            umask=umask,
            cwd=os.getcwd() if cwd is None else os.fspath(cwd),  # the worker's, as a Popen's
            devnull_stdin=stdin == subprocess.DEVNULL,
        )
    finally:
        server.busy.release()


class _Server:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_process", str(theirs.fileno())],
            cwd=Path(__file__).resolve().parents[1],  # where `tests` imports from
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=self.env,
        )
        theirs.close()
        self.sock = ours
        self.busy = threading.Lock()
        ready = self.sock.recv(_MAX_MESSAGE)
        if pickle.loads(ready) != "ready":
            raise RuntimeError("the CLI fork server did not start")

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        timeout: float | None,
        umask: int | None,
        cwd: str,
        devnull_stdin: bool,
    ) -> subprocess.CompletedProcess[str]:
        if umask is None:
            umask = os.umask(0)
            os.umask(umask)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # stdin: the worker's own, as subprocess.run leaves it, or /dev/null
        in_r = os.open(os.devnull, os.O_RDONLY) if devnull_stdin else 0
        request = {"argv": argv, "env": env, "umask": umask, "cwd": cwd}
        try:
            socket.send_fds(self.sock, [pickle.dumps(request)], [in_r, out_w, err_w])
        finally:
            for fd in (out_w, err_w, *((in_r,) if in_r != 0 else ())):
                os.close(fd)
        pid = pickle.loads(self.sock.recv(_MAX_MESSAGE))
        deadline = None if timeout is None else time.monotonic() + timeout
        out, err, status = _collect(self.sock, out_r, err_r, deadline)
        if status is None:  # the timeout: killed and waited for, as subprocess.run does
            os.kill(pid, 9)
            pickle.loads(self.sock.recv(_MAX_MESSAGE))
            for fd in (out_r, err_r):
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise subprocess.TimeoutExpired(
                [sys.executable, "-m", "influx_backupd", *argv],
                timeout or 0,
                output=out or None,  # bytes, as subprocess.run's own
                stderr=err or None,
            )
        return subprocess.CompletedProcess(
            [sys.executable, "-m", "influx_backupd", *argv],
            os.waitstatus_to_exitcode(status),
            _text(out),
            _text(err),
        )


def _text(data: bytes) -> str:
    # subprocess.run(text=True): the locale's encoding, strict, universal newlines
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")


def _collect(
    sock: socket.socket, out_r: int, err_r: int, deadline: float | None
) -> tuple[bytes, bytes, int | None]:
    """Both pipes to their end and the child's wait status, or None at the deadline (the pipes
    are then left open for the caller to read what the killed child still wrote)."""
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    status: int | None = None
    with selectors.DefaultSelector() as sel:
        sel.register(out_r, selectors.EVENT_READ)
        sel.register(err_r, selectors.EVENT_READ)
        sel.register(sock, selectors.EVENT_READ)
        open_pipes = 2
        while open_pipes or status is None:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return b"".join(chunks[out_r]), b"".join(chunks[err_r]), None
            for key, _ in sel.select(wait):
                if key.fileobj is sock:
                    status = pickle.loads(sock.recv(_MAX_MESSAGE))
                    sel.unregister(sock)
                    continue
                fd = key.fd
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    sel.unregister(fd)
                    os.close(fd)
                    open_pipes -= 1
    return b"".join(chunks[out_r]), b"".join(chunks[err_r]), status


_SERVER: _Server | None = None
_SERVER_PID = -1  # the process that started it: a forked test process starts its own
_START = threading.Lock()


def _server_for(env: Mapping[str, str], argv: Sequence[str | bytes]) -> _Server | None:
    """This worker's server, held for this call; None where only a fresh interpreter will do."""
    global _SERVER, _SERVER_PID
    if os.environ.get(_EXEC_ALWAYS) or any(isinstance(a, bytes) for a in argv):
        return None
    with _START:
        if _SERVER is None or os.getpid() != _SERVER_PID or _SERVER.proc.poll() is not None:
            _SERVER, _SERVER_PID = _Server(), os.getpid()
        server = _SERVER
    startup = {k for k in {*env, *server.env} if k.startswith(_STARTUP_KEYS)} - {_UNBUFFERED}
    if any(env.get(k) != server.env.get(k) for k in startup):
        return None
    if not server.busy.acquire(blocking=False):
        return None  # another thread's call is running: this one gets its own interpreter
    return server


# -- the server ---------------------------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    # what `python -m influx_backupd` imports as it starts, and every module a command may load
    import importlib
    import pkgutil

    import influx_backupd
    import influx_backupd.__main__

    for module in pkgutil.walk_packages(influx_backupd.__path__, "influx_backupd."):
        if module.name != "influx_backupd.report.notify_child":  # a program of its own
            importlib.import_module(module.name)
    sock.send(pickle.dumps("ready"))
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 3)
        except OSError:
            return
        if not data:
            return  # the worker is gone
        request = pickle.loads(data)
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(request, fds)  # never returns
        for fd in fds:
            if fd > 2:
                os.close(fd)
        sock.send(pickle.dumps(pid))
        _, status = os.waitpid(pid, 0)
        sock.send(pickle.dumps(status))


def _child(request: dict[str, Any], fds: list[int]) -> None:
    code = 1
    try:
        for target, fd in enumerate(fds):
            if fd != target:
                os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()
        _std_streams(unbuffered=bool(os.environ.get(_UNBUFFERED)))
        os.chdir(request["cwd"])
        sys.path[0] = os.getcwd()  # as `-m` sets it
        from influx_backupd.cli.main import main

        sys.argv = [sys.modules["influx_backupd.__main__"].__file__ or "", *request["argv"]]
        try:
            code = _exit_code(main(exiting=True))
        except SystemExit as exc:
            code = _exit_code(exc.code)
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        # the interpreter's own end: its threads joined, then atexit, then the streams flushed
        threading._shutdown()  # type: ignore[attr-defined]
        import atexit

        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                code = 120
    finally:
        os._exit(code)


def _std_streams(*, unbuffered: bool) -> None:
    """sys.stdin, stdout and stderr made anew on fds 0-2, the way Python makes them as it
    starts (Python/pylifecycle.c create_stdio), with the server's encoding (the same locale)."""
    made = []
    for fd, old in enumerate((sys.__stdin__, sys.__stdout__, sys.__stderr__)):
        assert old is not None
        reading = fd == 0
        raw = io.FileIO(fd, "r" if reading else "w", closefd=False)
        binary: Any = raw
        if reading or not unbuffered:
            binary = io.BufferedReader(raw) if reading else io.BufferedWriter(raw)
        tty = raw.isatty()
        made.append(
            io.TextIOWrapper(
                binary,
                encoding=old.encoding,
                errors=old.errors,
                line_buffering=not unbuffered and (tty or fd == 2) if not reading else tty,
                write_through=unbuffered and not reading,
                newline="\n",
            )
        )
    sys.stdin, sys.stdout, sys.stderr = made
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = made


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])))
