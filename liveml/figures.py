"""A benchmark's figures: flat JSON at ``LIVEML_HOME/bench/<name>.json``, printed as well (DESIGN.md).

Every script under ``bench/`` writes through :func:`write_figures`, and names its file with
:func:`figures_file` before it starts measuring, so a home it cannot write to fails in the first second
rather than after a run of many minutes (issue 13, item 7: a fresh home lost a 15-minute run's figures).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from liveml.config import LivemlConfig


def figures_file(cfg: LivemlConfig, name: str) -> Path:
    """``LIVEML_HOME/bench/<name>.json``, its directory made if it is missing."""
    return cfg.home_file("bench", f"{name}.json")


def write_figures(cfg: LivemlConfig, name: str, figures: Mapping[str, Any]) -> Path:
    """Write ``figures`` to :func:`figures_file`, print them, and say where they went."""
    out = figures_file(cfg, name)
    text = json.dumps(dict(figures), indent=2, default=_plain)
    out.write_text(text + "\n")
    print(text)
    print(f"written to {out}", flush=True)
    return out


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers; anything else JSON does not know as its text, never an error at the
    end of a long run."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)
