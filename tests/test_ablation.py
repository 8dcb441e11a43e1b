import json
import math
from pathlib import Path

import pytest
import yaml
from scipy import stats

from detector.ablation import (compare_to_baseline, find_baseline, load_runs, markdown_table, parse_spec, summarise,
                               t_interval, welch_test)
from tests.cli_runner import run_cli

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
    result = run_cli("ablate.py", str(sweep))
    assert result.returncode == 0, result.stderr
    assert (sweep / "ablation.md").read_text().startswith("| arm |")
    assert (sweep / "ablation.png").stat().st_size > 1000


def test_empty_folder_is_a_clear_error(tmp_path):
    result = run_cli("ablate.py", str(tmp_path))
    assert result.returncode == 2 and "no finished runs" in result.stderr


def welch_by_hand(a, b):
    """Welch's t and Welch-Satterthwaite df, written out."""
    mean = lambda x: sum(x) / len(x)  # noqa: E731
    var = lambda x: sum((v - mean(x)) ** 2 for v in x) / (len(x) - 1)  # noqa: E731
    qa, qb = var(a) / len(a), var(b) / len(b)
    t = (mean(a) - mean(b)) / math.sqrt(qa + qb)
    df = (qa + qb) ** 2 / (qa ** 2 / (len(a) - 1) + qb ** 2 / (len(b) - 1))
    return t, df


def test_t_interval_hand_computed():
    # n=2: 0.42 -+ t(0.975, 1) * s / sqrt(2) = 0.42 -+ 12.7062 * 0.02
    low, high = t_interval([0.40, 0.44])
    assert low == pytest.approx(0.42 - 12.706205 * 0.02, abs=1e-6) and high == pytest.approx(0.42 + 0.2541241, abs=1e-6)
    # n=3: 0.32 -+ t(0.975, 2) * 0.02 / sqrt(3) = 0.32 -+ 4.302653 * 0.011547
    low, high = t_interval([0.30, 0.34, 0.32])
    assert (low, high) == (pytest.approx(0.2703166, abs=1e-6), pytest.approx(0.3696834, abs=1e-6))
    assert all(math.isnan(v) for v in t_interval([0.5])) and all(math.isnan(v) for v in t_interval([]))


def test_welch_matches_hand_formula_and_scipy():
    a, b = [0.30, 0.34, 0.32], [0.40, 0.44]
    diff, p = welch_test(a, b)
    t, df = welch_by_hand(a, b)
    # var 0.0004/3 + 0.0008/2 -> t = -0.1 / 0.0230940 = -4.3301, df = 1.6842
    assert t == pytest.approx(-4.330127, abs=1e-5) and df == pytest.approx(1.684211, abs=1e-5)
    assert diff == pytest.approx(-0.10)
    assert p == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)
    assert p == pytest.approx(0.066496, abs=1e-5)  # not below 0.05: two seeds on one side are too few


def test_welch_edges_give_nan_not_a_verdict():
    assert math.isnan(welch_test([0.3], [0.4, 0.5])[1])  # one run: no spread
    assert math.isnan(welch_test([0.3, 0.3], [0.4, 0.4])[1])  # both constant
    assert welch_test([0.3], [0.4, 0.5])[0] == pytest.approx(-0.15)


def three_arm_sweep(root: Path):
    base = {"loss_cls": "qfl", "loss_box": "ciou"}
    for seed, ap in enumerate((0.40, 0.42, 0.41, 0.43)):
        fake_run(root / f"q{seed}", ["loss_cls=qfl", f"seed={seed}"], ap, 0.7, choices=base)
    for seed, ap in enumerate((0.30, 0.31, 0.33, 0.32)):  # far below: resolves
        fake_run(root / f"b{seed}", ["loss_cls=bce", f"seed={seed}"], ap, 0.6, choices={**base, "loss_cls": "bce"})
    for seed, ap in enumerate((0.35, 0.47)):  # wide: does not
        fake_run(root / f"v{seed}", ["loss_cls=vfl", f"seed={seed}"], ap, 0.6, choices={**base, "loss_cls": "vfl"})
    return root


def test_compare_to_baseline_marks_resolved_arms(tmp_path):
    rows = summarise(load_runs(three_arm_sweep(tmp_path)))
    baseline = find_baseline(rows, {"loss_cls": "qfl", "loss_box": "ciou"})
    assert baseline["arm"] == "loss_cls=qfl" and baseline["AP_values"] == [0.40, 0.42, 0.41, 0.43]
    compare_to_baseline(rows, baseline)
    by_arm = {r["arm"]: r for r in rows}
    bce, vfl = by_arm["loss_cls=bce"], by_arm["loss_cls=vfl"]
    assert bce["diff"] == pytest.approx(-0.10) and bce["resolved"] is True
    t, df = welch_by_hand([0.30, 0.31, 0.33, 0.32], [0.40, 0.42, 0.41, 0.43])
    assert bce["p"] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9) and bce["p"] < 1e-4
    assert vfl["diff"] == pytest.approx(-0.005) and vfl["resolved"] is False and vfl["p"] > 0.9
    assert baseline["resolved"] is None and math.isnan(baseline["p"])
    table = markdown_table(rows)
    assert "| loss_cls=qfl (baseline) | 4 | 0.415 ± 0.013 |" in table
    assert "| loss_cls=bce | 4 | 0.315 ± 0.013 | 0.294 to 0.336 | -0.100 |" in table
    # 0.41 -+ 12.7062 * 0.06 = -0.352 to 1.172; Welch p ~0.95: not resolved
    assert "| loss_cls=vfl | 2 | 0.410 ± 0.085 | -0.352 to 1.172 | -0.005 | 0.9" in table and "| no |" in table
    assert table.splitlines()[0].startswith("| arm | runs | AP | AP 95% CI | ΔAP vs baseline | p (Welch) | resolved |")


def test_find_baseline_partial_missing_and_ambiguous(tmp_path):
    rows = summarise(load_runs(three_arm_sweep(tmp_path)))
    assert find_baseline(rows, {"loss_cls": "bce"})["arm"] == "loss_cls=bce"
    assert find_baseline(rows, {"loss_cls": "giou"}) is None
    assert find_baseline(rows, {"unrelated": "x"}) is None
    rows[1]["keys"] = dict(rows[0]["keys"])  # two arms with the same keys
    with pytest.raises(ValueError, match="matches 2 arms"):
        find_baseline(rows, rows[0]["keys"])
    assert parse_spec("loss_cls=qfl dfl=on") == {"loss_cls": "qfl", "dfl": "on"}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_spec("qfl")


def test_cli_default_baseline_is_the_config_defaults(tmp_path):
    sweep = three_arm_sweep(tmp_path / "sweep")
    result = run_cli("ablate.py", str(sweep))
    assert result.returncode == 0, result.stderr
    defaults = yaml.safe_load((ROOT / "configs" / "train.yaml").read_text())["defaults"]
    default_cls = next(item["loss_cls"] for item in defaults if isinstance(item, dict) and "loss_cls" in item)
    assert f"| loss_cls={default_cls} (baseline) |" in result.stdout
    result = run_cli("ablate.py", str(sweep), "--baseline", "loss_cls=bce")
    assert result.returncode == 0 and "| loss_cls=bce (baseline) |" in result.stdout
    assert "| loss_cls=qfl | 4 | 0.415 ± 0.013 | 0.394 to 0.436 | +0.100 |" in result.stdout
    result = run_cli("ablate.py", str(sweep), "--baseline", "loss_cls=x")
    assert result.returncode == 2 and "matches no arm" in result.stderr and "loss_cls=vfl" in result.stderr
