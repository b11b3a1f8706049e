"""What a test does when a service it needs (PostgreSQL, Grid Engine, Slurm)
is not there."""

import os

import pytest


def service_missing(reason: str) -> None:
    """Skip the test with the reason; under MUPPET_REQUIRE_SERVICES=1 (CI),
    fail it instead, so that a broken set-up cannot pass as green."""
    if os.environ.get("MUPPET_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (MUPPET_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)
