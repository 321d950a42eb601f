"""The README's quickstart, read out of README.md and run line by line, as written, on the test stack.

The commands run in a tenant of their own (LIVEML_CONFIG), so `liveml ...` as printed reaches the session's
stack. Each line must succeed; at the end the live trips have predictions from the promoted version.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from liveml.config import load_config
from liveml.tenant import write_tenant_config
from tests.conftest import REPO, cli_json, env_without_config, run_cli

pytestmark = pytest.mark.e2e


def quickstart_commands(readme: str) -> list[str]:
    """The lines of the first ```bash block under the ``## Quickstart`` heading (comments left to bash)."""
    section = readme.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    if block is None:
        raise ValueError("README.md: the Quickstart section has no ```bash block")
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_quickstart_block_is_found_and_in_the_demos_order():
    cmds = quickstart_commands((REPO / "README.md").read_text())
    order = ["liveml up", "liveml tables create", "liveml submit features", "liveml submit enrich",
             "liveml replay", "liveml training-set build", "liveml train", "liveml models promote",
             "liveml replay --amplify"]
    at = [next(i for i, c in enumerate(cmds) if c.startswith(o)) for o in order]
    assert at == sorted(at), cmds


def test_the_readme_quickstart_runs_as_written(stack_config):
    tenant = write_tenant_config(load_config(stack_config, env={}), "quickstart", 9)
    env = env_without_config()
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["LIVEML_CONFIG"] = str(tenant)
    before = {j["id"] for j in cli_json(stack_config, "jobs")}
    try:
        for cmd in quickstart_commands((REPO / "README.md").read_text()):
            done = subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=1200)
            assert done.returncode == 0, (cmd, done.stdout[-3000:], done.stderr[-3000:])
        # the training set held every real trip with a good end event: `replay --wait` waited for both sources
        history = cli_json(tenant, "sql", "SELECT count(*) AS n FROM training.tips WHERE trip_id NOT LIKE '%-a%'")
        assert history[0]["n"] == 15_001, history  # 15,002 real trips, trip-01518's end event dead-lettered
        stable = next(m["version"] for m in cli_json(tenant, "models", "list") if "stable" in m["labels"])
        rows = cli_json(tenant, "sql", f"SELECT count(*) AS n FROM predictions.trips "
                                       f"WHERE status = 'ok' AND model_version = {stable}")
        assert rows[0]["n"] > 100, rows
    finally:
        for job in cli_json(stack_config, "jobs"):
            if job["id"] not in before and job["state"] in ("RUNNING", "CREATED", "RESTARTING", "INITIALIZING"):
                run_cli(stack_config, "cancel", job["id"], check=False)
