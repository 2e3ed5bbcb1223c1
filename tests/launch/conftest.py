"""Fixtures of the launch tests that more than one module uses."""

from __future__ import annotations

import os

import pytest

from tagtune.launch.pg_local import LocalPostgres, postgres_bin


@pytest.fixture(scope="module")
def postgres():
    if postgres_bin() is None:
        if os.environ.get("TAGTUNE_REQUIRE_POSTGRES"):
            pytest.fail("TAGTUNE_REQUIRE_POSTGRES is set and there is no initdb (apt-get install postgresql)")
        pytest.skip("no Postgres binaries (initdb); Debian: apt-get install postgresql")
    with LocalPostgres(settings={"fsync": "off"}) as pg:  # a test's data: no need to survive a crash
        yield pg
