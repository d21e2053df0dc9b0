"""The config fuzzer: any config, over every key the models know, valid-ish or hostile.

The rule: `check-config` exits 0, 2 or 78; when not 0 it prints exactly one line on stderr; it
never raises (no traceback). Then a sample of the configs it accepted runs the daemon for a few
seconds: a value check-config accepted must never kill it.

check-config runs in-process (cli.main, the code path of the command) so that hundreds of
examples fit in CI's minute; the daemon sample runs as real processes.
INFLUX_BACKUPD_FUZZ_EXAMPLES (default 300) and INFLUX_BACKUPD_FUZZ_DAEMONS (default 3) scale it:
a long run is `INFLUX_BACKUPD_FUZZ_EXAMPLES=5000 python3 -m pytest -q tests/faults/test_config_fuzz.py`.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from influx_backupd.cli.main import main
from influx_backupd.core.config import Settings
from tests.faults.conftest import FaultResult

EXAMPLES = int(os.environ.get("INFLUX_BACKUPD_FUZZ_EXAMPLES", "300"))
DAEMONS = int(os.environ.get("INFLUX_BACKUPD_FUZZ_DAEMONS", "3"))
ALLOWED = {0, 2, 78}

# -- TOML out (tomllib reads only) -----------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's, but TOML has no surrogates: keep non-ASCII as it is
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(type(value))


def to_toml(doc: dict[str, Any]) -> str:
    out = []
    for name, table in doc.items():
        if isinstance(table, list) and table and all(isinstance(t, dict) for t in table):
            for item in table:
                out.append(f"[[{name}]]")
                out += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in item.items()]
        elif isinstance(table, dict):
            out.append(f"[{name}]")
            out += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
        else:
            out.insert(0, f"{json.dumps(name)} = {_toml_value(table)}")
    return "\n".join(out) + "\n"


# -- every key, from the models ---------------------------------------------------------------------


def _fields(model: type[BaseModel]) -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        names.append(info.alias or name)
    return names


def _section_models() -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for name, info in Settings.model_fields.items():
        annotation = info.annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            found[name] = inner
    return found


SECTIONS = _section_models()  # daemon, influxd, storage, job (a list), verify, notify, offsite
CORE = {"daemon", "influxd", "storage", "job", "verify"}

# -- values ---------------------------------------------------------------------------------------

ODD = "x \"'\\\x00\n\t\x7f\u202e€ü"
hostile_text = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=20),  # a TOML file holds no surrogates
    st.text(alphabet=st.sampled_from([*list(ODD), "/", ".", ":", "-"]), max_size=12),
    st.sampled_from(["", " ", "-", "--help", "..", "/", "\x00", "nan", "inf", "-1", "1e999"]),
)
hostile = st.one_of(
    hostile_text,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(hostile_text, max_size=3),
    st.dictionaries(st.sampled_from(["a", "dir"]), hostile_text, max_size=2),
)


def durations() -> st.SearchStrategy[Any]:
    unit = st.sampled_from(["", "ms", "s", "m", "h", "d", "w"])
    number = st.one_of(st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False))
    return st.one_of(
        st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**25), unit),
        number,
        st.sampled_from(["90s", "5m", "2h", "7d", "0", "0s", "1.5h", " 3 m ", "1w"]),
    )


def paths(root: Path) -> st.SearchStrategy[Any]:
    name = st.text(
        alphabet=st.sampled_from([*list("ab -_.\"'\\ü€"), "\x00"]), min_size=1, max_size=8
    )
    return st.one_of(
        st.builds(lambda n: str(root / n), name),
        st.sampled_from([str(root / "state"), str(root / "archives"), "", "relative/dir", "."]),
    )


def valid_ish(key: str, root: Path) -> st.SearchStrategy[Any]:
    """Values a user might write for this key: mostly right, sometimes just wrong."""
    conf = str(root / "influxdb.conf")
    by_key: dict[str, st.SearchStrategy[Any]] = {
        "schedule": st.sampled_from(
            ["0 3 * * *", "*/5 * * * *", "@daily", "@hourly", "0 3 * *", "61 * * * *", "0 0 31 2 *"]
        ),
        "timezone": st.sampled_from(["UTC", "Europe/Berlin", "Mars/Olympus", "", "../../etc"]),
        "mode": st.sampled_from(["cold", "hot", "auto", "warm"]),
        "fallback": st.sampled_from(["none", "cold", "hot"]),
        "copy": st.sampled_from(["staged", "direct", "rsync"]),
        "log_level": st.sampled_from(["debug", "info", "warning", "error", "loud"]),
        "cold_window": st.sampled_from(["01:00-05:00", "23:00-01:00", "25:00-26:00", "1-5"]),
        "name": st.one_of(
            st.sampled_from(["nightly", "hourly", "a", "-x", "x" * 70]), hostile_text
        ),
        "url": st.sampled_from(
            ["http://127.0.0.1:1", "https://[::1]:8086/", "http://", "localhost", "http://h:0"]
        ),
        "backup_url": st.sampled_from(["http://127.0.0.1:1", "ftp://x", "http://[::1"]),
        "heartbeat_url": st.sampled_from(["http://127.0.0.1:1/ping", "https://", "hc-ping"]),
        "backup_host": st.sampled_from(["127.0.0.1:1", "[::1]:8088", "host:", ":8088", "h:99999"]),
        "service": st.sampled_from(["influxdb.service", "influxdb", "-x", "a b", ""]),
        "command": st.one_of(
            st.sampled_from([[], [""], ["influxd", "run"], [conf], ["/bin/true", "\x00"]]),
            st.lists(
                st.sampled_from(["/bin/true", "influxd", "", "-config", conf, "\x00"]), max_size=4
            ),
        ),
        "on_success": st.lists(st.sampled_from(["/bin/true", "", "x", "\x00"]), max_size=3),
        "on_failure": st.lists(st.sampled_from(["/bin/true", "", "x"]), max_size=3),
        "config": st.sampled_from(
            [conf, conf, str(root), str(root / "missing.conf"), "influxdb.conf"]
        ),
        "password_file": st.sampled_from([str(root / "pw"), str(root / "empty"), "pw", str(root)]),
        "username": st.sampled_from(["admin", "", "a:b", "a\nb"]),
        "user": st.sampled_from(["root", "", "nobody", "no such user"]),
        "group": st.sampled_from(["root", "", "nogroup"]),
    }
    if key in by_key:
        return by_key[key]
    if key.endswith(("_timeout", "_every", "every", "jitter", "catch_up", "max_downtime")):
        return durations()
    if key.startswith("keep_") and key != "keep_staging":
        return st.integers(-3, 2**63 - 1)
    if key in ("dir", "state_dir", "metrics_file", "pidfile", "binary"):
        return paths(root)
    return st.booleans()


def good(key: str, root: Path) -> st.SearchStrategy[Any]:
    """A value that should be accepted (alone: some keys go in pairs, e.g. username)."""
    conf = str(root / "influxdb.conf")
    by_key: dict[str, list[Any]] = {
        "schedule": ["0 3 * * *", "*/5 * * * *", "* * * * *"],
        "every": ["1s", "2s", "1h", 3],
        "timezone": ["UTC", "Europe/Berlin"],
        "mode": ["cold", "hot", "auto"],
        "fallback": ["none", "cold"],
        "copy": ["staged", "direct"],
        "log_level": ["debug", "info", "warning", "error"],
        "cold_window": ["01:00-05:00", "23:00-01:00"],
        "name": ["nightly", "h.o-u_r1y"],
        "url": ["http://127.0.0.1:1", "http://localhost:1/"],
        "backup_url": ["http://127.0.0.1:1"],
        "heartbeat_url": ["http://127.0.0.1:1/ping"],
        "backup_host": ["127.0.0.1:1", "localhost:1"],
        "command": [["/bin/true", "run", "-config", conf]],
        "on_success": [["/bin/true"], ["/bin/echo", "ok"]],
        "on_failure": [["/bin/true"]],
        "config": [conf],
        "password_file": [str(root / "pw")],
        "username": ["admin"],
        "user": ["root"],
        "group": ["root"],
        "service": ["influxdb.service"],
        "dir": [str(root / "archives"), str(root / 'b ü "q" {x}')],
        "state_dir": [str(root / "state"), str(root / "s t")],
        "metrics_file": [str(root / "metrics.prom")],
        "pidfile": [str(root / "influxd.pid")],
        "binary": ["/bin/true"],
    }
    if key in by_key:
        return st.sampled_from(by_key[key])
    if key.endswith(("_timeout", "_every", "jitter", "catch_up", "max_downtime")):
        return st.sampled_from(["90s", "5m", 30, 0.5, "1d"])
    if key.startswith("keep_") and key != "keep_staging":
        return st.integers(0, 10)
    return st.booleans()


@st.composite
def configs(draw: st.DrawFn, root: Path) -> dict[str, Any]:
    """A config over every section and key: each key absent, valid-ish, or hostile."""
    base: dict[str, Any] = {
        "daemon": {"state_dir": str(root / "state")},
        "influxd": {
            "config": str(root / "influxdb.conf"),
            "command": ["/bin/true", "run", "-config", str(root / "influxdb.conf")],
        },
        "storage": {"dir": str(root / "archives")},
    }
    doc: dict[str, Any] = {}
    # clean: only good values; one: one key valid-ish or hostile; chaos: any key may be
    style = draw(st.sampled_from(["clean", "one", "one", "chaos"]))
    every_key = [(s, k) for s, m in SECTIONS.items() for k in _fields(m)]
    odd_one = draw(st.sampled_from(every_key))
    for section, model in SECTIONS.items():
        if section not in CORE and style != "chaos" and odd_one[0] != section:
            continue  # [notify], [offsite]: their own required keys; tried when picked
        count = draw(st.integers(0, 2)) if section == "job" else 1
        tables = []
        for _ in range(count):
            table = dict(base.get(section, {}))
            if section == "job":
                table["name"] = draw(st.sampled_from(["nightly", "hourly"]))
            for key in _fields(model):
                if style == "chaos" or (style == "one" and (section, key) == odd_one):
                    choice = draw(st.sampled_from(["absent", "good", "valid", "hostile"]))
                else:
                    choice = draw(st.sampled_from(["absent", "absent", "good"]))
                if key == "service" and choice == "good":
                    choice = "absent"  # with the base's command: one of the two
                if choice == "good":
                    table[key] = draw(good(key, root))
                elif choice == "valid":
                    table[key] = draw(valid_ish(key, root))
                elif choice == "hostile":
                    table[key] = draw(hostile)
            if table.get("schedule") is not None and table.get("every") is not None:
                del table[draw(st.sampled_from(["schedule", "every"]))]  # mostly one of them
            if draw(st.integers(0, 20)) == 0:
                table[draw(st.sampled_from(["extra", "dirr", "Schedule"]))] = 1
            tables.append(table)
        if section == "job":
            if tables:
                doc["job"] = tables
        elif draw(st.integers(0, 30)) != 0:  # now and then a whole section missing
            doc[section] = tables[0]
    return doc


def _server_files(root: Path) -> None:
    (root / "influxdb.conf").write_text(
        'bind-address = "127.0.0.1:1"\n'
        f'[meta]\n  dir = "{root}/server/meta"\n'
        f'[data]\n  dir = "{root}/server/data"\n  wal-dir = "{root}/server/wal"\n'
        '[http]\n  bind-address = "127.0.0.1:1"\n'
    )
    (root / "pw").write_text("secret\n")
    (root / "empty").write_text("")


def _confined(doc: dict[str, Any], root: Path) -> bool:
    """A config the daemon may run: every dir and file it writes under root (no default
    /var/lib/influx-backupd), and no systemd unit (the daemon could stop a real one)."""
    daemon, influxd = doc.get("daemon") or {}, doc.get("influxd") or {}
    written = [daemon.get("state_dir"), (doc.get("storage") or {}).get("dir")]
    optional = [daemon.get("metrics_file"), influxd.get("pidfile")]
    inside = [isinstance(p, str) and p.startswith(f"{root}/") for p in written]
    inside += [p is None or (isinstance(p, str) and p.startswith(f"{root}/")) for p in optional]
    return all(inside) and not influxd.get("service")


def check_config(path: Path) -> tuple[int, str]:
    """check-config in this process: (exit status, stderr); any exception fails the example."""
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            status = main(["--config", str(path), "check-config"])
        except SystemExit as exc:  # argparse's own exits
            status = exc.code if isinstance(exc.code, int) else 2
    return status, err.getvalue()


@pytest.mark.fault("fuzz", "check-config on any config")
def test_check_config_exits_0_2_or_78_in_one_line_and_the_daemon_survives_what_it_accepts(
    tmp_path: Path, fault_result: FaultResult
) -> None:
    accepted: list[Path] = []
    tried = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.data())
    def one(data: st.DataObject) -> None:
        nonlocal tried
        tried += 1
        root = tmp_path / f"ex{tried}"
        root.mkdir()
        _server_files(root)
        doc = data.draw(configs(root))
        path = root / "config.toml"
        path.write_text(to_toml(doc))
        status, stderr = check_config(path)
        assert status in ALLOWED, (status, stderr[-2000:])
        assert "Traceback" not in stderr, stderr[-3000:]
        if status != 0:
            lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("{")]
            assert len(lines) == 1, (status, stderr[-2000:])
        elif _confined(doc, root):
            accepted.append(path)

    one()
    fault_result.examples = tried
    assert accepted, "the fuzzer never produced a config check-config accepts"
    # the daemon on a spread of accepted configs, side by side, a few seconds each
    sample = accepted[:: max(1, len(accepted) // DAEMONS)][:DAEMONS]
    daemons = [
        (
            path,
            subprocess.Popen(
                [sys.executable, "-m", "influx_backupd", "--config", str(path), "run"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                cwd=path.parent,
            ),
        )
        for path in sample
    ]
    # up and scheduling (its state published), then a few seconds more on its schedules
    deadline = time.monotonic() + 60
    for path, proc in daemons:
        state = Path(tomllib.loads(path.read_text())["daemon"]["state_dir"], "daemon.json")
        while proc.poll() is None and not state.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    time.sleep(4)
    died = []
    for path, proc in daemons:
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not alive or "Traceback" in err or proc.returncode != 0:
            died.append((path.read_text(), proc.returncode, err[-1500:]))
    assert not died, died
