"""Where the shared COCO128 is: for the tests' fixtures and the benchmarks."""
from __future__ import annotations

import os
from pathlib import Path


def coco128_root() -> Path | None:
    """$COCO128, else ../shared/data/coco128 beside the checkout, when it holds images/train2017."""
    root = Path(os.environ.get("COCO128", Path(__file__).resolve().parents[3] / "shared" / "data" / "coco128"))
    return root if (root / "images" / "train2017").is_dir() else None
