"""``flemme compare``'s statistics, budgets, row syntax and width matching: checked against
hand-computed cases and independent computations (no training)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from flemme_core.compare.budget import Budget, match_params, parse_budget, parse_shard
from flemme_core.compare.plot import pareto_front, time_axis
from flemme_core.compare.stats import bootstrap_indices, mean_std, paired_bootstrap, paired_comparison
from flemme_core.compare.study import parse_encoder_spec, split_list
from flemme_core.errors import ConfigError


def _exact_bootstrap(d: np.ndarray) -> np.ndarray:
    """Every equally likely outcome of the two-level resampling (seeds, then items), enumerated."""
    s, i = d.shape
    out = []
    for seeds in itertools.product(range(s), repeat=s):
        for items in itertools.product(range(i), repeat=s * i):
            out.append(np.mean([d[seeds[k], items[k * i + j]] for k in range(s) for j in range(i)]))
    return np.sort(out)


def test_bootstrap_interval_equals_the_enumerated_distribution():
    d = np.array([[0.0, 1.0], [2.0, 6.0]])  # 2 seeds x 2 held-out items: 4 * 16 = 64 outcomes
    outcomes = _exact_bootstrap(d)
    values, counts = np.unique(outcomes, return_counts=True)
    cdf = np.cumsum(counts) / len(outcomes)
    low = values[np.searchsorted(cdf, 0.025)]   # the 2.5% quantile lies inside an atom (cdf 0.016 -> 0.078)
    high = values[np.searchsorted(cdf, 0.975)]  # and the 97.5% one too (cdf 0.922 -> 0.984)
    assert (low, high) == (0.25, 5.0)
    mean, lo, hi = paired_bootstrap(d, resamples=200_000, seed=3)
    assert mean == pytest.approx(2.25)
    assert (lo, hi) == pytest.approx((low, high), abs=1e-12)


def test_bootstrap_matches_a_naive_loop_with_the_same_draws():
    rng_data = np.random.default_rng(0)
    d = rng_data.normal(size=(3, 5))
    resamples = 500
    seeds, items = bootstrap_indices(3, 5, resamples, np.random.default_rng(11))
    naive = []
    for b in range(resamples):
        vals = [d[seeds[b, k], items[b, k, j]] for k in range(3) for j in range(5)]
        naive.append(sum(vals) / len(vals))
    mean, lo, hi = paired_bootstrap(d, resamples=resamples, seed=11)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(naive, [2.5, 97.5])), abs=1e-12)
    assert mean == pytest.approx(d.mean())


def test_paired_comparison_pairs_seeds_and_items_and_counts_better_seeds():
    row = {0: [0.9, 0.8, float("nan")], 1: [0.7, 0.7, 0.5], 2: [0.6, 0.6, 0.6]}
    base = {0: [0.8, 0.8, 0.1], 1: [0.8, 0.6, 0.5], 3: [0.0, 0.0, 0.0]}
    out = paired_comparison(row, base, higher_is_better=True, resamples=1000)
    # seeds 0 and 1 pair; item 2 is dropped (NaN in seed 0); diffs [[.1, 0], [-.1, .1]]
    assert out["seeds"] == 2 and out["items"] == 2
    assert out["diff"] == pytest.approx(0.025)
    assert out["better_seeds"] == 1  # seed 0: +0.05, seed 1: 0.0 (not better)
    assert out["low"] <= out["diff"] <= out["high"]
    lower = paired_comparison({0: [3.0]}, {0: [5.0]}, higher_is_better=False, resamples=100)
    assert lower["better_seeds"] == 1 and lower["diff"] == -2.0 and lower["low"] == lower["high"] == -2.0


def test_mean_std_is_the_sample_std_of_finite_values():
    assert mean_std([1.0, 2.0, 4.0, None, float("nan")]) == pytest.approx((7 / 3, np.std([1, 2, 4], ddof=1), 3))
    assert mean_std([5.0])[:2] == (5.0, 0.0)


def test_pareto_front_keeps_the_undominated_rows():
    # (cost, metric): the third is dominated by the first (cheaper and better)
    assert pareto_front([(1, 0.8), (5, 0.9), (2, 0.7), (9, 0.9)], higher=True) == [0, 1]
    assert pareto_front([(1, 3.0), (2, 1.0), (3, 2.0)], higher=False) == [0, 1]


@pytest.mark.parametrize("text,expected", [
    ("steps=600", Budget(steps=600)), ("seconds=180", Budget(seconds=180.0)),
    ("steps=2000,seconds=90", Budget(steps=2000, seconds=90.0)), ({"steps": 5}, Budget(steps=5))])
def test_budget_parses(text, expected):
    assert parse_budget(text) == expected


def test_seconds_budget_sets_the_trainers_wall_clock_limit():
    assert Budget(seconds=180).train_keys() == {"max_seconds": 180, "steps": 1_000_000}
    assert Budget(steps=600).train_keys() == {"steps": 600}


@pytest.mark.parametrize("text,fragment", [
    ("steps=-1", "positive whole number"), ("steps=1.5", "positive whole number"), ("seconds=0", "positive number"),
    ("minutes=3", "unknown budget key 'minutes'"), ("steps", "expected steps=N")])
def test_bad_budget_is_one_line(text, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_budget(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["5/4", "0/2", "2", "a/b", "1/0"])
def test_bad_shard_is_one_line(text):
    with pytest.raises(ConfigError, match="must be i/n"):
        parse_shard(text)
    assert parse_shard("2/4") == (2, 4)


def test_row_syntax():
    assert parse_encoder_spec("mamba:mixer=identity:d_state=8") == {"name": "mamba", "mixer": "identity", "d_state": 8}
    assert parse_encoder_spec("cnn:channels=[8,16]") == {"name": "cnn", "channels": [8, 16]}
    assert split_list("cnn,mamba:mixer=identity,cnn:channels=[8,16]") == [
        "cnn", "mamba:mixer=identity", "cnn:channels=[8,16]"]
    with pytest.raises(ConfigError, match="key=value"):
        parse_encoder_spec("mamba:identity")


TINY_MODEL = {"arch": "unet", "encoder": {"name": "tiny", "channels": [8, 16, 32]}, "image_size": [32, 32],
              "in_channels": 1, "out_channels": 3, "dims": 2}


def _cpu_count(config):
    from flemme_core import build_model

    return sum(p.numel() for p in build_model(config).parameters())


@pytest.mark.parametrize("target", [20_000, 100_000, 400_000])
def test_match_params_lands_within_ten_percent(target):
    config, n = match_params(TINY_MODEL, target)
    assert n == _cpu_count(config)  # the meta-device count is the real model's
    assert abs(n - target) <= 0.10 * target
    widths = config["encoder"]["channels"]
    assert all(w % 8 == 0 for w in widths) and widths == sorted(widths)
    assert TINY_MODEL["encoder"]["channels"] == [8, 16, 32]  # the input is not modified


def test_impossible_match_is_one_line():
    with pytest.raises(ConfigError, match=r"match: params 10 is impossible for row: the closest is") as info:
        match_params(TINY_MODEL, 10)
    assert "\n" not in str(info.value)



def test_budget_line_names_rows_whose_stages_keep_their_own_steps():
    # the mmfd study's student-swin trains stages.student.steps = 2000 under a 1000-step dataset
    # budget: the report's budget line must not claim 1000 for it
    from flemme_core.compare.study import study_from_dict

    study = study_from_dict({
        "name": "s", "budget": {"steps": 1000},
        "datasets": [{"name": "synthetic-2d", "preset": "synthetic-2d"}],
        "rows": [{"name": "plain", "arch": "unet", "encoder": {"name": "tiny"}},
                 {"name": "student", "arch": "unet", "encoder": {"name": "tiny"},
                  "train": {"stages": {"student": {"steps": 2000}}}}]})
    assert study.budget_text() == "1000 steps; rows with their own steps: student (stages: student 2000)"


def test_time_axis_is_seconds_per_step_when_the_budget_equalised_the_run_time():
    equal = [{"train_seconds": 180.1, "s_per_step": 0.16}, {"train_seconds": 180.3, "s_per_step": 0.28}]
    assert time_axis(equal)[0] == "s_per_step"
    steps = [{"train_seconds": 96.0, "s_per_step": 0.16}, {"train_seconds": 168.0, "s_per_step": 0.28}]
    assert time_axis(steps)[0] == "train_seconds"


def _entry(dataset: str, row: str, dice: list[float], steps: float, params: int) -> dict:
    from flemme_core.compare.stats import mean_std

    mean, std, n = mean_std(dice)
    return {"dataset": dataset, "row": row, "metric": "dice", "steps_trained": steps, "parameters": params,
            "metrics": {"dice": {"mean": mean, "std": std, "n": n}}}


def test_summary_table_is_rows_by_datasets_with_the_best_mean_in_bold():
    from flemme_core.compare.report import summary_table

    entries = [_entry("a", "base", [0.80, 0.82], 100, 1_000_000), _entry("a", "new", [0.85, 0.83], 50, 2_500),
               _entry("b", "base", [0.90, 0.92], 80, 1_000_000)]
    lines = summary_table(entries).splitlines()
    assert lines[0].split("|")[1].strip() == "row" and "a: dice · steps · params" in lines[0]
    base, new = lines[2], lines[3]
    assert "0.810 ± 0.014 · 100 steps · 1.00M" in base and "**0.840 ± 0.014** · 50 steps · 2.50k" in new
    assert "**0.910 ± 0.014** · 80 steps" in base and new.rstrip(" |").endswith("—")  # no cell of new on b
    assert len({len(ln) for ln in lines}) == 1  # aligned as printed
    # a row only on the second dataset keeps its place in the study's order
    late = [*entries, _entry("b", "late", [0.5, 0.5], 10, 100)]
    order = [ln.split("|")[1].strip() for ln in summary_table(late, ["late", "base", "new"]).splitlines()[2:]]
    assert order == ["late", "base", "new"]
