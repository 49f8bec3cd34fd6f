"""Entry points: the loader stage, the driver, the CLI, offline evaluation, benchmarks.

Importing `jobs` makes sure `import datasets` means this project's package, not
Hugging Face's (see `datasets/__init__.py`).
"""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _claim_datasets_name() -> None:
    root = str(PROJECT_ROOT)
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)
    loaded = sys.modules.get("datasets")
    if loaded is not None and not getattr(loaded, "IS_RAYINFER", False):
        raise ImportError(
            f"the module 'datasets' already imported in this process is {getattr(loaded, '__file__', loaded)!r}, "
            "not rayinfer's (probably Hugging Face datasets). Import jobs/actors before it, or run rayinfer "
            "in its own process."
        )


_claim_datasets_name()
