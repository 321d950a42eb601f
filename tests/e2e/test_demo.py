"""`liveml demo` (what `make demo` runs): stack, tables, proof job, checked row by row."""

import pytest

from tests.conftest import cli_json

pytestmark = pytest.mark.e2e


def test_demo_reports_ok(stack_config):
    result = cli_json(stack_config, "demo", "--rows", "120")
    assert result["ok"] is True
    assert result["job_state"] == "FINISHED"
    assert result["sent"] == result["read_back"] == 120 and result["mismatched"] == 0
