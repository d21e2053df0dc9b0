"""Which argv names the configured influxdb.conf: the config's path is resolved, the command
may name it through a link (/etc/influxdb/influxdb.conf -> a managed copy)."""

from __future__ import annotations

from pathlib import Path

from influx_backupd.influxd.server import names_conf


def test_a_command_naming_the_conf_through_a_link_names_it(tmp_path: Path) -> None:
    real = tmp_path / "managed" / "influxdb.conf"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "influxdb.conf"
    link.symlink_to(real)
    conf = link.resolve()  # as the config holds it
    for argv in (["influxd", "-config", str(link)], ["influxd", f"-config={link}"]):
        assert names_conf(argv, conf), argv
    assert names_conf(["influxd", "-config", str(real)], conf)
    other = tmp_path / "other.conf"
    other.write_text("")
    assert not names_conf(["influxd", "-config", str(other)], conf)
    assert not names_conf(["influxd", "run"], conf)


def test_only_a_config_flag_names_it_not_a_path_anywhere_in_a_command(tmp_path: Path) -> None:
    """`tail -f influxdb.conf`, a pager, an editor: not a server. Before, any argument equal
    to the path counted (a good archive deleted, influxd kept down while a `tail -f` ran)."""
    conf = tmp_path / "influxdb.conf"
    conf.write_text("")
    for argv in (
        ["tail", "-f", str(conf)],
        ["less", str(conf)],
        ["vim", str(conf)],
        ["influxd", "run", str(conf)],
        ["influxd", "-config"],
        ["grep", "-config", "-r", str(conf)],
    ):
        assert not names_conf(argv, conf), argv
    for argv in (
        ["influxd", "run", "-config", str(conf)],
        ["/usr/sbin/runuser", "-u", "influxdb", "--", "influxd", "--config", str(conf)],
        ["sh", "wrapper.sh", f"--config={conf}"],
    ):
        assert names_conf(argv, conf), argv


def test_a_relative_config_path_is_read_against_the_process_working_dir(tmp_path: Path) -> None:
    """`cd /srv/influx && influxd -config influxdb.conf`: before, such a server was "not
    running" to a cold backup (nothing stopped, exit 1) while restore named its pid."""
    conf = tmp_path / "server" / "influxdb.conf"
    conf.parent.mkdir()
    conf.write_text("")
    for argv in (["influxd", "-config", "influxdb.conf"], ["influxd", "-config=./influxdb.conf"]):
        assert names_conf(argv, conf, lambda: str(conf.parent)), argv
        assert not names_conf(argv, conf, lambda: str(tmp_path)), argv  # another dir's file
        assert not names_conf(argv, conf, lambda: None), argv  # a cwd that cannot be read
        assert not names_conf(argv, conf), argv
    assert names_conf(["influxd", "-config", "server/influxdb.conf"], conf, lambda: str(tmp_path))
    asked: list[int] = []
    assert not names_conf(["tail", "-f", "influxdb.conf"], conf, lambda: asked.append(1) or None)
    assert asked == [], "a process naming no -config is not asked its working dir"


def test_of_two_config_flags_the_last_is_the_one_influxd_reads(tmp_path: Path) -> None:
    """Go's flag package keeps a flag's last value: `-config ours -config other` serves other.
    Audit (reading): any -config value counted, so such a server was taken for ours."""
    conf = tmp_path / "influxdb.conf"
    other = tmp_path / "other.conf"
    for path in (conf, other):
        path.write_text("")
    assert not names_conf(["influxd", "-config", str(conf), "-config", str(other)], conf)
    assert names_conf(["influxd", "-config", str(other), f"-config={conf}"], conf)
