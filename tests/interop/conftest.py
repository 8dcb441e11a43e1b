"""Fixtures for the ultralytics interop tests: the committed checkpoint, its expected outputs, and a
pickle rewriter that turns it into the files other ultralytics versions, tasks and architectures
write (module paths and class names are plain text in a protocol-2 pickle)."""
import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKPOINT = FIXTURES / "yolov8n_coco128_ultralytics.pt"
EXPECTED = FIXTURES / "yolov8n_coco128_ultralytics_expected.npz"


@pytest.fixture(scope="session")
def ul_checkpoint() -> Path:
    """yolov8n trained 3 epochs on COCO128 at imgsz 160 by ultralytics 8.4.190 and finalised by its
    strip_optimizer (see tests/fixtures/make_ultralytics_fixture.py)."""
    assert CHECKPOINT.is_file(), f"{CHECKPOINT} is missing (committed with the tests)"
    return CHECKPOINT


@pytest.fixture(scope="session")
def ul_expected() -> dict:
    with np.load(EXPECTED) as data:
        return {k: data[k] for k in data.files}


def rewrite(source: Path, target: Path, replacements: dict[bytes, bytes]) -> Path:
    """Copy the zip checkpoint, replacing byte strings in its data.pkl (each must occur)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                for old, new in replacements.items():
                    assert old in data, old
                    data = data.replace(old, new)
            zout.writestr(info, data)
    return target


@pytest.fixture(name="rewrite_pickle")
def rewrite_pickle_fixture():
    return rewrite


@pytest.fixture(scope="session")
def ultralytics():
    """The ultralytics package (a test-only peer: pip install -e .[compat]); skips without it."""
    return pytest.importorskip("ultralytics", reason="ultralytics is not installed (optional: pip install .[compat])")


@pytest.fixture(scope="session")
def coco128_root() -> Path:
    """../shared/data/coco128 (or $COCO128); the test skips when it is absent."""
    from tests.reference.coco128 import coco128_root as find

    root = find()
    if root is None:
        pytest.skip("COCO128 is absent ($COCO128, else ../shared/data/coco128)")
    return root


@pytest.fixture(scope="session")
def crafted():
    """tests/interop/crafted.py, the hostile-file helpers (loaded by path: test modules cannot import it)."""
    spec = importlib.util.spec_from_file_location("interop_crafted", Path(__file__).with_name("crafted.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
