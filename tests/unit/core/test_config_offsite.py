"""[offsite]: a value that would fail when used is refused at load, one line naming the key, exit
78, nothing touched; a secret in a value or a file is never in that line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyrage
import pytest

from influx_backupd.cli import main as cli
from influx_backupd.core.config import ConfigError, load

INFLUXDB_CONF = """
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
"""
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"
CREDENTIALS = f"[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = {SECRET}\n"
BUCKET_FORM = (
    "must be an S3 bucket name: 3-63 lowercase letters, digits, '.' or '-', "
    "beginning and ending with a letter or digit"
)
URL_FORM = "must be an http:// or https:// URL like https://s3.example.net"
IDENTITY_FORM = (
    "it must hold age identities (AGE-SECRET-KEY-1… lines, from age-keygen) and # comments"
)


def config_file(tmp_path: Path, offsite: str, bucket: str = "influx-backups") -> Path:
    conf = tmp_path / "influxdb.conf"
    conf.write_text(INFLUXDB_CONF.format(root=tmp_path / "server"))
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
[influxd]
config = "{conf}"
service = "influxdb.service"
[storage]
dir = "{tmp_path / "archives"}"
[offsite]
bucket = "{bucket}"
{offsite}
"""
    )
    return path


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load(path)
    return str(caught.value)


def secret_file(tmp_path: Path, name: str, data: bytes, mode: int = 0o600) -> Path:
    file = tmp_path / name
    file.write_bytes(data)
    file.chmod(mode)
    return file


# -- endpoint_url ------------------------------------------------------------------------


def test_an_endpoint_url_with_credentials_is_refused_without_showing_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, f'endpoint_url = "http://AKIAEXAMPLE:{SECRET}@s3.example.net"')
    assert cli.main(["--config", str(path), "check-config"]) == 78
    out, err = capsys.readouterr()
    assert err == (
        f"influx-backupd: {path}: offsite.endpoint_url: must not hold credentials "
        "(user:password@host; the URL is not shown): put the keys in credentials_file; "
        f"{URL_FORM}\n"
    )
    assert out == "" and not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "url",
    [
        f"http://AKIAEXAMPLE:{SECRET}@s3.example.net",
        f"http://{SECRET}@s3.example.net",
        f"http://AKIAEXAMPLE:{SECRET}@[::1",  # would not parse either
        f"http://AKIAEXAMPLE:{SECRET}@s3.example.net:99999",
        f"http://AKIAEXAMPLE:{SECRET} @s3.example.net",
    ],
)
def test_no_part_of_a_url_with_credentials_is_shown(tmp_path: Path, url: str) -> None:
    message = refused(config_file(tmp_path, f'endpoint_url = "{url}"'))
    assert "offsite.endpoint_url:" in message and "\n" not in message
    assert SECRET[:6] not in message and "AKIAEXAMPLE" not in message, message


@pytest.mark.parametrize(
    ("url", "wrong"),
    [
        ("http://[::1", "has a broken [IPv6 address]"),
        ("http://127.0.0.1:99999", "its port must be a number 1-65535"),
        ("http://127.0.0.1:9o00", "its port must be a number 1-65535"),
        ("http://127.0.0.1:0", "its port must be 1-65535, not 0"),
        ("http://host/ x", "must not contain spaces or control characters"),
        ("http://host\\tx", "must not contain spaces or control characters"),
        (" http://host", "must not contain spaces or control characters"),
        ("http://", "must name a host"),
        ("http:///bucket", "must name a host"),
        ("http://host name", "must not contain spaces or control characters"),
        ("ftp://host", "must start with http:// or https://"),
        ("s3.example.net", "must start with http:// or https://"),
        ("http://h!st", "must name a host"),
        ("http://host?x=1", "must not have a ?query or #fragment"),
    ],
)
def test_an_endpoint_url_that_is_no_usable_url_is_one_line(
    tmp_path: Path, url: str, wrong: str
) -> None:
    path = config_file(tmp_path, f'endpoint_url = "{url}"')
    assert refused(path) == f"{path}: offsite.endpoint_url: {wrong}; {URL_FORM}"


@pytest.mark.parametrize(
    "url",
    ["https://s3.example.net", "http://127.0.0.1:9000", "http://[::1]:9000", "https://h/base/"],
)
def test_usable_endpoint_urls_are_accepted(tmp_path: Path, url: str) -> None:
    assert load(config_file(tmp_path, f'endpoint_url = "{url}"')).settings.offsite is not None


def test_a_broken_endpoint_url_is_no_traceback_from_a_real_command(tmp_path: Path) -> None:
    path = config_file(tmp_path, 'endpoint_url = "http://[::1"')
    done = subprocess.run(
        [sys.executable, "-m", "influx_backupd", "--config", str(path), "offsite", "sync"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    assert done.stderr.count("\n") == 1 and "offsite.endpoint_url:" in done.stderr
    assert not (tmp_path / "state").exists()


# -- bucket ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bucket", "rule"),
    [
        ("a..b", "without two periods in a row"),
        ("192.168.1.1", "that is not formatted as an IP address"),
        ("xn--bucket", "not starting with 'xn--' (reserved by S3)"),
        ("sthree-bucket", "not starting with 'sthree-' (reserved by S3)"),
        ("bucket-s3alias", "not ending with '-s3alias' (reserved by S3)"),
        ("bucket--ol-s3", "not ending with '--ol-s3' (reserved by S3)"),
    ],
)
def test_bucket_names_s3_refuses_are_refused(tmp_path: Path, bucket: str, rule: str) -> None:
    path = config_file(tmp_path, "", bucket=bucket)
    assert refused(path) == f"{path}: offsite.bucket: {BUCKET_FORM}, {rule}, not {bucket!r}"


@pytest.mark.parametrize("bucket", ["Bad", "-ab", "ab-", "a_b", "bucket."])
def test_bucket_names_of_the_wrong_form_are_refused(tmp_path: Path, bucket: str) -> None:
    path = config_file(tmp_path, "", bucket=bucket)
    assert refused(path) == f"{path}: offsite.bucket: {BUCKET_FORM}, not {bucket!r}"


@pytest.mark.parametrize("bucket", ["abc", "my.bucket-1", "1.2.3", "192.168.1.1a", "x" * 63])
def test_good_bucket_names_are_accepted(tmp_path: Path, bucket: str) -> None:
    offsite = load(config_file(tmp_path, "", bucket=bucket)).settings.offsite
    assert offsite is not None and offsite.bucket == bucket


# -- encrypt_to --------------------------------------------------------------------------


def test_an_encrypt_to_that_is_no_age_recipient_is_refused_with_its_index(tmp_path: Path) -> None:
    good = str(pyrage.x25519.Identity.generate().to_public())
    path = config_file(tmp_path, f'encrypt_to = ["{good}", "age1garbagegarbagegarbage"]')
    assert refused(path) == (
        f"{path}: offsite.encrypt_to[1]: 'age1garb…' is not an age recipient "
        "(age1…, from age-keygen or age-keygen -y)"
    )


@pytest.mark.parametrize(
    "key",
    [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDQ5ZbJ8fZ2Tn3rSgR4lCbaZQmGfUFJsF3v2ZQ9bYXyZ a@b",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC a@b",
    ],
)
def test_an_ssh_recipient_is_refused_the_tool_could_never_read_those_backups(
    tmp_path: Path, key: str
) -> None:
    path = config_file(tmp_path, f'encrypt_to = ["{key}"]')
    assert refused(path) == (
        f"{path}: offsite.encrypt_to[0]: {key[:8] + '…'!r} is an SSH key: influx-backupd reads "
        "its backups back only with an age identity (identity_file), so backups encrypted to "
        "an SSH key could never be listed, verified, imported or restored by it; use an age "
        "recipient (age1…, from age-keygen or age-keygen -y)"
    )


def test_an_age_recipient_is_accepted(tmp_path: Path) -> None:
    good = str(pyrage.x25519.Identity.generate().to_public())
    offsite = load(config_file(tmp_path, f'encrypt_to = ["{good}"]')).settings.offsite
    assert offsite is not None and offsite.encrypt_to == [good]


# -- identity_file -----------------------------------------------------------------------


def test_an_identity_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    identity = secret_file(tmp_path, "key.txt", b"\xff\xfe\x00AGE")
    path = config_file(tmp_path, f'identity_file = "{identity}"')
    assert refused(path) == f"{path}: offsite.identity_file: {identity} is not UTF-8 text"


def test_an_identity_file_without_an_identity_is_refused(tmp_path: Path) -> None:
    identity = secret_file(tmp_path, "key.txt", b"# created: today\n\n")
    path = config_file(tmp_path, f'identity_file = "{identity}"')
    assert refused(path) == (
        f"{path}: offsite.identity_file: {identity} holds no age identity; {IDENTITY_FORM}"
    )


def test_a_bad_line_in_an_identity_file_is_named_by_number_never_shown(tmp_path: Path) -> None:
    good = str(pyrage.x25519.Identity.generate())
    broken = good[:-4] + "QQQQ"  # a secret key that lost its checksum: still a secret
    identity = secret_file(tmp_path, "key.txt", f"# key\n{good}\n{broken}\n".encode())
    path = config_file(tmp_path, f'identity_file = "{identity}"')
    message = refused(path)
    assert message == (
        f"{path}: offsite.identity_file: {identity} is not an age identity file (line 3); "
        f"{IDENTITY_FORM}"
    )
    assert good[15:30] not in message and broken[15:30] not in message


def test_an_identity_file_of_age_keygen_is_accepted(tmp_path: Path) -> None:
    key = pyrage.x25519.Identity.generate()
    text = f"# created: 2026-01-01\n# public key: {key.to_public()}\n{key}\n"
    identity = secret_file(tmp_path, "key.txt", text.encode())
    offsite = load(config_file(tmp_path, f'identity_file = "{identity}"')).settings.offsite
    assert offsite is not None and offsite.identity_file == identity


# -- credentials_file and profile ---------------------------------------------------------


def test_a_credentials_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    creds = secret_file(tmp_path, "creds", b"[default]\naws_secret_access_key = \xff\xfe\n")
    path = config_file(tmp_path, f'credentials_file = "{creds}"')
    assert refused(path) == f"{path}: offsite.credentials_file: {creds} is not UTF-8 text"


def test_a_profile_the_credentials_file_lacks_is_refused(tmp_path: Path) -> None:
    creds = secret_file(tmp_path, "creds", CREDENTIALS.encode())
    path = config_file(tmp_path, f'credentials_file = "{creds}"\nprofile = "nonexist"')
    assert refused(path) == (
        f"{path}: offsite.profile: {creds} has no [nonexist] section (sections: [default])"
    )


def test_a_credentials_file_without_the_secret_key_is_refused(tmp_path: Path) -> None:
    creds = secret_file(tmp_path, "creds", b"[default]\naws_access_key_id = AKIAEXAMPLE\n")
    path = config_file(tmp_path, f'credentials_file = "{creds}"')
    assert refused(path) == (
        f"{path}: offsite.credentials_file: {creds} lacks aws_secret_access_key in [default] "
        "(it needs aws_access_key_id and aws_secret_access_key)"
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # an indented line continues the value above it (configparser, as the AWS CLI's)
        ("[default]\naws_access_key_id = AKIAEXAMPLE\n  {s}\naws_secret_access_key = x\n", "id"),
        ("[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = a {s}\n", "secret"),
        ("[default]\naws_access_key_id = AKIA\taa\naws_secret_access_key = {s}\n", "id"),
        ("[default]\naws_access_key_id = AKIA\naws_secret_access_key = {s}\u00e9\n", "secret"),
    ],
)
def test_a_credential_that_is_not_one_word_is_refused_at_load_never_shown(
    tmp_path: Path, text: str, key: str
) -> None:
    """Before: check-config said ok, and every request failed as "connection lost" (http.client
    refuses a header value holding a line break)."""
    creds = secret_file(tmp_path, "creds", text.format(s=SECRET).encode())
    path = config_file(tmp_path, f'credentials_file = "{creds}"')
    message = refused(path)
    name = "aws_access_key_id" if key == "id" else "aws_secret_access_key"
    assert message == (
        f"{path}: offsite.credentials_file: {creds} {name} in [default] is not one word of "
        "printable ASCII (an indented line after it continues its value; a space or a control "
        "character): each value must be one line, as the key was given"
    )
    assert SECRET not in message and SECRET[:8] not in message


def test_a_credentials_file_that_does_not_parse_names_the_line_never_shows_it(
    tmp_path: Path,
) -> None:
    creds = secret_file(tmp_path, "creds", f"[default]\naws_access_key_id = A\n{SECRET}\n".encode())
    path = config_file(tmp_path, f'credentials_file = "{creds}"')
    message = refused(path)
    assert message == (
        f"{path}: offsite.credentials_file: {creds} is not an AWS credentials file (line 3): "
        "it must hold [default] with aws_access_key_id = … and aws_secret_access_key = …"
    )


def test_a_good_credentials_file_and_profile_are_accepted(tmp_path: Path) -> None:
    creds = secret_file(tmp_path, "creds", b"[other]\n" + CREDENTIALS.split("\n", 1)[1].encode())
    offsite = load(
        config_file(tmp_path, f'credentials_file = "{creds}"\nprofile = "other"')
    ).settings.offsite
    assert offsite is not None and offsite.profile == "other"


# -- check-config: secret files others may read --------------------------------------------


def test_check_config_warns_of_secret_files_open_to_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = secret_file(tmp_path, "creds", CREDENTIALS.encode(), mode=0o644)
    key = pyrage.x25519.Identity.generate()
    identity = secret_file(tmp_path, "key.txt", f"{key}\n".encode(), mode=0o640)
    path = config_file(tmp_path, f'credentials_file = "{creds}"\nidentity_file = "{identity}"')
    assert cli.main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert (
        f"warning: offsite.identity_file: {identity} is readable or writable by group or others "
        f"(mode 0640) and holds age identities: chmod 600 {identity}\n" in out
    )
    assert (
        f"warning: offsite.credentials_file: {creds} is readable or writable by group or others "
        f"(mode 0644) and holds S3 keys: chmod 600 {creds}\n" in out
    )
    creds.chmod(0o600)
    identity.chmod(0o400)
    assert cli.main(["--config", str(path), "check-config"]) == 0
    assert "chmod 600" not in capsys.readouterr().out


def test_off_site_retention_without_the_identity_to_read_encrypted_manifests_is_refused(
    tmp_path: Path,
) -> None:
    """Retention reads every manifest to know which objects kept backups need; encrypted, it
    cannot without the identity, and every sync failed at its end."""
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    path = config_file(tmp_path, f'encrypt_to = ["{recipient}"]\nkeep_daily = 7\n')
    assert refused(path) == (
        f"{path}: offsite: keep_daily needs identity_file when encrypt_to is set: off-site "
        "retention reads the encrypted manifests to know which objects the kept backups still "
        "need; set identity_file, or leave off-site retention off (no keep_* rule)"
    )
    load(config_file(tmp_path, f'encrypt_to = ["{recipient}"]\n'))  # no retention: fine


@pytest.mark.parametrize(
    "url",
    [
        "ftp://backup:pa55word@h/x",
        "https://h:0/6f1c-secret-uuid",
        "hc-ping.com/6f1c-secret-uuid",
        # http, no port: passed, then every request failed with "nonnumeric port: 'pa55word@h'"
        # in logs, the catalog and stdout
        "http://backup:pa55word@h/6f1c-secret-uuid",
        "http://backup:pa55word@127.0.0.1:8086",
    ],
)
def test_a_bad_influxd_url_or_heartbeat_url_is_refused_without_its_secret_parts(
    tmp_path: Path, url: str
) -> None:
    """user:password, a healthchecks UUID in the path: the error names the key, not them."""
    conf = tmp_path / "influxdb.conf"
    conf.write_text(INFLUXDB_CONF.format(root=tmp_path / "server"))
    for where, line in (
        ("influxd.url", f'url = "{url}"'),
        ("job[0].heartbeat_url", None),
    ):
        path = tmp_path / "config.toml"
        job = f'\n[[job]]\nname = "n"\nschedule = "@daily"\nheartbeat_url = "{url}"\n'
        path.write_text(
            f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[influxd]\nconfig = "{conf}"\n'
            f'service = "influxdb.service"\n{line or ""}\n[storage]\n'
            f'dir = "{tmp_path / "archives"}"\n' + ("" if line else job)
        )
        said = refused(path)
        assert f"{where}: " in said, said
        assert "pa55word" not in said and "6f1c" not in said and "backup:" not in said, said


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8086/?u=admin&p=hunter2", "http://127.0.0.1:8086#hunter2", "http://h:1?"],
)
@pytest.mark.parametrize("key", ["url", "backup_url"])
def test_an_influxd_url_with_a_query_is_refused_without_it(
    tmp_path: Path, url: str, key: str
) -> None:
    """InfluxDB takes u=…&p=… in a query: accepted, every /ping went to `…?u=…&p=…/ping` (every
    cold backup failed) and the password was in records and logs. A heartbeat's query stays."""
    conf = tmp_path / "influxdb.conf"
    conf.write_text(INFLUXDB_CONF.format(root=tmp_path / "server"))
    path = tmp_path / "config.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[influxd]\nconfig = "{conf}"\n'
        f'service = "influxdb.service"\n{key} = "{url}"\n[storage]\n'
        f'dir = "{tmp_path / "archives"}"\n'
    )
    said = refused(path)
    assert f"influxd.{key}: " in said and "query" in said, said
    assert "hunter2" not in said and "admin" not in said, said
    assert "username and password_file" in said, said
