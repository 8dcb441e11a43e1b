import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detector.ablation import load_runs, markdown_table, summarise

ROOT = Path(__file__).resolve().parents[1]


def fake_run(folder: Path, overrides, ap, ap50, seconds=60.0, choices=None):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if choices is not None:
        hydra = {"hydra": {"runtime": {"choices": {**choices, "hydra/launcher": "basic"}}}}
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    final = {"AP": ap, "AP50": ap50, "APs": 0.1, "APm": 0.2, "APl": 0.3, "spearman": 0.5, "pearson": 0.4}
    (folder / "summary.json").write_text(json.dumps({"final": final, "train_seconds": seconds}))


def make_sweep(root: Path):
    fake_run(root / "0", ["loss_cls=qfl", "seed=0", "workers=2"], 0.40, 0.70)
    fake_run(root / "1", ["loss_cls=qfl", "seed=1", "workers=2"], 0.44, 0.74)
    fake_run(root / "2", ["loss_cls=bce", "seed=0", "workers=2"], 0.30, 0.60, seconds=120.0)
    return root


def test_arms_pool_seeds_and_are_labelled_by_what_differs(tmp_path):
    rows = summarise(load_runs(make_sweep(tmp_path)))
    assert [r["arm"] for r in rows] == ["loss_cls=qfl", "loss_cls=bce"]
    qfl = rows[0]
    assert qfl["runs"] == 2 and qfl["AP"] == pytest.approx(0.42)
    assert qfl["AP_std"] == pytest.approx(0.0282843, rel=1e-5)
    assert rows[1]["minutes"] == pytest.approx(2.0)
    table = markdown_table(rows)
    assert "0.420 ± 0.028" in table and "| loss_cls=bce | 1 |" in table


def test_one_factor_sweeps_share_the_baseline_through_group_choices(tmp_path):
    base = {"loss_cls": "qfl", "loss_box": "ciou", "dfl": "on", "assigner": "tal"}
    fake_run(tmp_path / "cls" / "0", ["loss_cls=qfl", "seed=0"], 0.40, 0.70, choices=base)
    fake_run(tmp_path / "cls" / "1", ["loss_cls=bce", "seed=0"], 0.30, 0.60, choices={**base, "loss_cls": "bce"})
    fake_run(tmp_path / "box" / "0", ["seed=1"], 0.44, 0.74, choices=base)  # baseline by default choices
    fake_run(tmp_path / "box" / "1", ["loss_box=giou", "seed=0"], 0.38, 0.69, choices={**base, "loss_box": "giou"})
    rows = {r["arm"]: r for r in summarise(load_runs(tmp_path))}
    assert set(rows) == {"loss_box=ciou loss_cls=qfl", "loss_box=ciou loss_cls=bce", "loss_box=giou loss_cls=qfl"}
    baseline = rows["loss_box=ciou loss_cls=qfl"]
    assert baseline["runs"] == 2 and baseline["AP"] == pytest.approx(0.42)


def test_cli_writes_table_and_chart(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "ablate.py"), str(sweep)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (sweep / "ablation.md").read_text().startswith("| arm |")
    assert (sweep / "ablation.png").stat().st_size > 1000


def test_empty_folder_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "ablate.py"), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "no finished runs" in result.stderr
