"""[offsite] prefix: the error says the rule the check enforces."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from influx_backupd.offsite.settings import OffsiteSettings


def _error(prefix: str) -> str:
    with pytest.raises(ValidationError) as caught:
        OffsiteSettings(bucket="some-bucket", prefix=prefix)
    [error] = caught.value.errors()
    return str(error["msg"])


@pytest.mark.parametrize("prefix", [".hidden", "a/.b", "-x", "a//b", "/a", "a/", "a b"])
def test_a_prefix_out_of_form_is_refused_saying_the_rule(prefix: str) -> None:
    said = _error(prefix)
    assert "each starting with a letter or digit" in said and repr(prefix) in said, said


@pytest.mark.parametrize("prefix", ["db1", "db1.dc2.example", "fleet/db_1", "a.b/c-d/e"])
def test_prefixes_in_form_are_taken(prefix: str) -> None:
    assert OffsiteSettings(bucket="some-bucket", prefix=prefix).prefix == prefix
