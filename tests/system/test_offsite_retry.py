"""The daemon's off-site retry back-off counts failures, not sightings of one hung request: a
sync left behind on a request that never ends was counted again at each later trigger that
found it still held, and one request took the wait from 60 s to 480 s within a minute."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from influx_backupd.daemon.loop import OFFSITE, Due
from influx_backupd.influxd.sandbox import Sandbox
from tests.conftest import write_config
from tests.system.test_daemon_clock import scheduling, server  # noqa: F401 (a fixture)


def test_a_request_still_held_is_not_counted_again(tmp_path: Path, server: Sandbox) -> None:  # noqa: F811
    credentials = tmp_path / "s3-credentials"
    credentials.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    credentials.chmod(0o600)
    offsite = (
        f'\n[offsite]\nbucket = "backups"\nendpoint_url = "http://127.0.0.1:9"\n'
        f'credentials_file = "{credentials}"\nretry_after = "1m"\n'
    )
    config = write_config(tmp_path, server, extra=offsite)
    hung = threading.Event()
    with scheduling(config) as d:
        d._held_sync = threading.Thread(target=hung.wait, daemon=True)  # a request not ended
        d._held_sync.start()
        try:
            d._offsite_failures = 1  # the sync left behind was one failure
            for _ in range(3):
                d._offsite(Due(OFFSITE, time.time(), "retry"))
            assert d._offsite_failures == 1
            retry = d._scheduler.get_job(OFFSITE + " retry")
            assert retry is not None
            assert retry.next_run_time.timestamp() - time.time() <= 61, "still 60 s, not 480"
        finally:
            hung.set()
