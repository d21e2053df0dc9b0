"""The secret files as the off-site code reads them when used (a file changed since the config's
load): one OffsiteError line, never a traceback, never the secret; parsed as load parsed them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest

from influx_backupd.core.offsite_section import OffsiteSection
from influx_backupd.offsite import crypto
from influx_backupd.offsite.bucket import _credentials
from influx_backupd.offsite.errors import OffsiteError
from tests.conftest import raised_promptly

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"


def test_an_identity_file_that_is_not_text_is_one_offsite_error(tmp_path: Path) -> None:
    identity = tmp_path / "key.txt"
    identity.write_bytes(b"\xff\xfeAGE-SECRET-KEY-1")
    with pytest.raises(OffsiteError) as caught:
        crypto.identities(identity)
    assert str(caught.value) == f"identity_file {identity} is not UTF-8 text"


def test_identities_and_recipients_parse_as_at_load(tmp_path: Path) -> None:
    key = pyrage.x25519.Identity.generate()
    identity = tmp_path / "key.txt"
    identity.write_text(f"# public key: {key.to_public()}\n{key}\n")
    assert len(crypto.identities(identity)) == 1
    assert len(crypto.recipients([str(key.to_public())])) == 1
    with pytest.raises(OffsiteError) as caught:
        crypto.recipients([str(key.to_public()), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"])
    assert str(caught.value).startswith("encrypt_to[1]: 'ssh-ed25…' is an SSH key: ")


def _settings(creds: Path, profile: str = "default") -> OffsiteSection:
    return OffsiteSection(bucket="influx-backups", credentials_file=creds, profile=profile)


def test_a_credentials_file_that_is_not_text_is_one_offsite_error(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_bytes(b"[default]\naws_secret_access_key = \xff\xfe\n")
    with pytest.raises(OffsiteError) as caught:
        _credentials(_settings(creds))
    assert str(caught.value) == f"credentials_file {creds} is not UTF-8 text"


def test_credentials_are_read_as_at_load_and_never_shown(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_text(
        f"[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = {SECRET}\n"
    )
    assert _credentials(_settings(creds)) == {
        "aws_access_key_id": "AKIAEXAMPLE",
        "aws_secret_access_key": SECRET,
    }
    with pytest.raises(OffsiteError) as caught:
        _credentials(_settings(creds, profile="other"))
    assert (
        str(caught.value)
        == f"credentials_file {creds} has no [other] section (sections: [default])"
    )
    creds.write_text(f"[default]\n{SECRET}\n")
    with pytest.raises(OffsiteError) as caught:
        _credentials(_settings(creds))
    assert SECRET not in str(caught.value) and "(line 2)" in str(caught.value)


def test_a_name_key_others_may_read_is_made_private_again_and_said(tmp_path: Path) -> None:
    """Before: a name key made world-readable (cp, a chmod by hand) stayed so, unsaid: with it,
    anyone on the host may confirm a guessed file in the bucket by its object name."""
    from structlog.testing import capture_logs

    key = tmp_path / "offsite-name.key"
    made = crypto.local_key(key)
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    with capture_logs() as logs:
        assert crypto.local_key(key) == made
    assert key.stat().st_mode & 0o777 == 0o600
    assert [(e["event"], e["mode"]) for e in logs] == [("offsite.key_file_made_private", "0644")]
    with capture_logs() as logs:  # private already: nothing to say
        crypto.local_key(key)
    assert logs == []


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_secret_file_replaced_by_a_fifo_or_a_device_since_the_load_is_one_line(
    tmp_path: Path, kind: str
) -> None:
    """Before: the load refused them, but the sync read them again with a plain read: a FIFO
    put there since hung the sync (and the daemon's off-site work) for good, /dev/zero filled
    memory. Now each reader takes only a regular file of sane size, as the load does."""
    odd = tmp_path / "odd"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to("/dev/zero")
    readers: dict[str, Callable[[], object]] = {
        f"identity_file {odd}": lambda: crypto.identities(odd),
        f"credentials_file {odd}": lambda: _credentials(_settings(odd)),
        f"{odd}": lambda: crypto.local_key(odd),
    }
    for named, read in readers.items():
        caught = raised_promptly(read)
        assert isinstance(caught, OffsiteError), (named, caught)
        assert str(caught).startswith(named) and "not a regular file" in str(caught), caught
    assert odd.is_fifo() if kind == "fifo" else odd.is_symlink()  # left as it was
