"""``flemme compare`` end to end on a tiny study (2 encoder rows x 1 arch x synthetic data x
2 seeds, a few steps): every report column, kill and re-run, shards + --table-only equal to
the unsharded study, a changed cell refused, bad input in one line with nothing written."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from flemme_core.cli import main

STUDY = {
    "name": "tiny",
    "encoders": ["tiny", "tiny:kernel_size=5"],
    "architectures": ["unet"],
    "datasets": [{"name": "syn", "preset": "synthetic-2d", "patch_size": [32, 32], "batch_size": 2,
                  "options": {"num_train": 6, "num_held_out": 3, "size": [32, 32], "seed": 0}}],
    "model": {"encoder": {"channels": [4, 8], "norm": "instance"}},
    "train": {"save_every": 2, "lr": 0.01},
    "seeds": 2,
    "budget": {"steps": 16},
    "threads": 1,
    "bootstrap": 1000,
}
ROWS = ["tiny+unet", "tiny:kernel_size=5+unet"]
#: what must be identical between two runs of the same study (timings are not)
QUALITY = ("dataset", "row", "seeds", "baseline", "metric", "metrics", "parameters", "macs", "paired", "steps_trained")


def _compare(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flemme_core", "compare", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _quality(folder: Path) -> list[dict]:
    entries = json.loads((folder / "report.json").read_text())["entries"]
    return [{k: e.get(k) for k in QUALITY} for e in entries]


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("study") / "tiny.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


@pytest.fixture(scope="module")
def full(study_file) -> Path:
    out = study_file.parent / "full"
    proc = _compare(str(study_file), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_tiny_study_writes_every_report_column(full):
    report = json.loads((full / "report.json").read_text())
    entries = report["entries"]
    assert [e["row"] for e in entries] == ROWS and not report["missing"]
    classes = ["dice/disk-1", "dice/square-2"]
    for e in entries:
        assert e["seeds"] == [0, 1] and e["steps_trained"] == 16
        for key in ["dice", "hd95", *classes]:
            m = e["metrics"][key]
            assert m["n"] == 2 and len(m["values"]) == 2 and m["std"] >= 0
        assert e["parameters"] > 1000 and e["macs"] > 10_000
        for key in ("s_per_step", "train_seconds", "infer_ms", "peak_memory_mb"):
            assert e[key] > 0, key
    base, other = entries
    assert "paired" not in base
    p = other["paired"]
    assert p["seeds"] == 2 and p["items"] == 3 and 0 <= p["better_seeds"] <= 2 and p["low"] <= p["diff"] <= p["high"]
    # the paired mean difference is the difference of the rows' means (same seeds, same items)
    assert p["diff"] == pytest.approx(_mean_item_dice(full, ROWS[1]) - _mean_item_dice(full, ROWS[0]))
    md = (full / "report.md").read_text()
    for column in ("dice", "dice/disk-1", "hd95", "Δ item dice vs baseline [95% CI]", "better", "params", "MACs/sample",
                   "train s/step", "train s", "infer ms", "peak MB", *ROWS):
        assert column in md
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len({len(ln) for ln in lines}) == 1  # aligned: readable as printed
    rows = list(csv.DictReader((full / "report.csv").open()))
    assert [r["row"] for r in rows] == ROWS and float(rows[0]["dice_mean"]) == pytest.approx(base["metrics"]["dice"]["mean"], abs=1e-6)  # CSV: 6 decimals
    assert (full / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the resolved study and ordinary run folders
    resolved = yaml.safe_load((full / "study.yaml").read_text())
    assert [r["name"] for r in resolved["rows"]] == ROWS and resolved["seeds"] == [0, 1]
    cell = full / "cells" / "tiny+unet" / "syn" / "seed1"
    for name in ("config.yaml", "last.safetensors", "metrics.jsonl", ".flemme-run.json", "result.json", "cell.yaml"):
        assert (cell / name).exists(), name
    assert yaml.safe_load((cell / "config.yaml").read_text())["train"]["seed"] == 1


def _mean_item_dice(folder: Path, row: str) -> float:
    values = []
    for seed in (0, 1):
        from flemme_core.compare.study import slug

        result = json.loads((folder / "cells" / slug(row) / "syn" / f"seed{seed}" / "result.json").read_text())
        values += [item["dice"] for item in result["per_item"]]
    return sum(values) / len(values)


def test_shards_kill_and_rerun_equal_the_uninterrupted_study(full, study_file):
    out = study_file.parent / "sharded"
    first = _compare(str(study_file), "-o", str(out), "--shard", "1/2")
    assert first.returncode == 0, first.stderr
    # shard 2 runs the second row for seeds 0 then 1: kill it while it trains seed 1
    finished = out / "cells" / "tiny-kernel_size=5+unet" / "syn" / "seed0"
    target = out / "cells" / "tiny-kernel_size=5+unet" / "syn" / "seed1"
    proc = subprocess.Popen([sys.executable, "-m", "flemme_core", "compare", str(study_file), "-o", str(out),
                             "--shard", "2/2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not ((target / "state.json").exists() and not (target / "result.json").exists()):
        assert proc.poll() is None and time.time() < deadline, "shard 2 ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (target / "result.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in finished.iterdir() if p.is_file()}
    again = _compare(str(study_file), "-o", str(out), "--shard", "2/2")
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir() if p.is_file() and p.name in kept} == kept
    assert "1 finished, 1 to run" in again.stderr
    table = _compare(str(study_file), "-o", str(out), "--table-only")
    assert table.returncode == 0, table.stderr
    assert _quality(out) == _quality(full)
    assert "### syn" in table.stdout and "start" not in table.stderr  # the table on stdout, nothing trained


two_cores = pytest.mark.skipif(len(__import__("flemme_core.compare.workers", fromlist=["x"]).usable_cpus()) < 2,
                               reason="needs 2 usable cores")


@two_cores
def test_two_pinned_workers_equal_the_sequential_study(full, study_file):
    out = study_file.parent / "workers"
    proc = _compare(str(study_file), "-o", str(out), "--workers", "2")  # threads: 1 in the study
    assert proc.returncode == 0, proc.stderr
    assert "2 workers pinned to cores" in proc.stderr
    assert _quality(out) == _quality(full)
    from flemme_core.compare.workers import usable_cpus

    cores = [json.loads(r.read_text())["cpus"] for r in sorted(out.glob("cells/*/*/*/result.json"))]
    assert len(cores) == 4 and all(len(c) == 1 and c[0] in usable_cpus() for c in cores)
    assert len({c[0] for c in cores}) == 2  # both workers ran cells, each on its own core


def test_a_changed_cell_is_refused_in_one_line(full, study_file):
    changed = study_file.parent / "changed.yaml"
    changed.write_text(yaml.safe_dump({**STUDY, "train": {**STUDY["train"], "lr": 0.02}}))
    before = (full / "report.md").stat().st_mtime_ns
    proc = _compare(str(changed), "-o", str(full))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "was run with a different config (train.lr changed)" in proc.stderr
    assert (full / "report.md").stat().st_mtime_ns == before


@pytest.mark.parametrize("args,fragment", [
    (["--encoders", "tiny,tinyy", "--arch", "unet", "--data", "synthetic-2d"], "unknown encoder 'tinyy'; did you mean 'tiny'"),
    (["--encoders", "tiny", "--arch", "unett", "--data", "synthetic-2d"], "unknown architecture 'unett'; did you mean 'unet'"),
    (["--encoders", "tiny", "--arch", "unet", "--data", "synthetc-2d"], "unknown dataset preset 'synthetc-2d'; did you mean 'synthetic-2d'"),
    (["--encoders", "tiny", "--arch", "unet", "--data", "synthetic-2d", "--shard", "5/4"], "--shard '5/4' must be i/n"),
    (["--encoders", "tiny", "--arch", "unet", "--data", "synthetic-2d", "--budget", "steps=-1"],
     "budget steps must be a positive whole number"),
    (["--encoders", "tiny", "--arch", "unet", "--data", "synthetic-2d", "--match-params", "10"],
     "match: params 10 is impossible for row tiny+unet on synthetic-2d: the closest is"),
    (["--encoders", "tiny", "--arch", "unet", "--data", "synthetic-2d", "--baseline", "cnn+unet"], "unknown baseline row"),
    (["--encoders", "tiny", "--arch", "unet", "--data", "synthetic-2d", "--workers", "4096", "--threads", "1"],
     "--workers 4096 needs 4096 x 1 threads"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, fragment):
    out = tmp_path / "study"
    result = CliRunner().invoke(main, ["compare", *args, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.strip().count("\n") == 0, result.output
    assert fragment in result.output
    assert not out.exists()


def test_table_only_needs_a_study_folder(tmp_path, study_file):
    result = CliRunner().invoke(main, ["compare", str(study_file), "--table-only", "-o", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output


# -- rows that train from another row's cell (${cells.ROW.checkpoint}) ------------------------------
#: "warm" starts from "pre"'s final model of the same seed and learns nothing (lr 0): its weights
#: must then be exactly those of that cell. Listed first: the study must still run "pre" before it.
DEPENDENT = {**{k: STUDY[k] for k in ("datasets", "model", "threads", "bootstrap")}, "name": "chain", "seeds": 2,
             "budget": {"steps": 4}, "train": {"save_every": 2, "lr": 0.01},
             "rows": [{"name": "warm", "encoder": "tiny", "arch": "warm_unet",
                       "arch_options": {"init": "${cells.pre.checkpoint}"}, "train": {"lr": 0.0}, "baseline": "pre"},
                      {"name": "pre", "encoder": "tiny", "arch": "unet"}]}


def _compare_warm(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEMME_PLUGIN_MODULES": os.environ["FLEMME_PLUGIN_MODULES"] + ",warm_plugin"}
    return subprocess.run([sys.executable, "-m", "flemme_core", "compare", *args], capture_output=True, text=True,
                          timeout=900, check=False, env=env)


def _weights(cell: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(cell / "last.safetensors"))


def test_a_row_trains_from_another_rows_cell_of_the_same_seed(tmp_path):
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump(DEPENDENT))
    out = tmp_path / "chain"
    # another process holds pre's seed-0 cell: warm's seed-0 cell waits for it, in one line, and runs nothing
    from flemme_core.training.runfolder import RunLock

    with RunLock(out / "cells" / "pre" / "syn" / "seed0"):
        held = _compare_warm(str(spec), "-o", str(out), "--shard", "1/2")
    assert held.returncode == 0, held.stderr
    line = next(ln for ln in held.stderr.splitlines() if "skip   warm" in ln)
    assert "needs cells/pre/syn/seed0, which has no result yet" in line
    assert not list(out.glob("cells/*/*/*/result.json"))
    # a shard holds a cell and the cells it needs: shard 1 is seed 0 (pre, then warm), shard 2 seed 1
    for part in ("1/2", "2/2"):
        proc = _compare_warm(str(spec), "-o", str(out), "--shard", part)
        assert proc.returncode == 0, proc.stderr
        assert "needs" not in proc.stderr
        starts = [ln.split("start")[1].strip() for ln in proc.stderr.splitlines() if " start " in ln]
        seed = int(part[0]) - 1
        assert [s.split("  ")[0] for s in starts] == [f"pre · syn · seed {seed}", f"warm · syn · seed {seed}"], starts
    for seed in (0, 1):
        warm, pre = (out / "cells" / row / "syn" / f"seed{seed}" for row in ("warm", "pre"))
        # the recorded cell keeps the reference; the run folder's config has the path it resolved to
        assert yaml.safe_load((warm / "cell.yaml").read_text())["run"]["model"]["arch_options"]["init"] == \
            "${cells.pre.checkpoint}"
        assert yaml.safe_load((warm / "config.yaml").read_text())["model"]["arch_options"]["init"] == \
            str((pre / "last.safetensors").resolve())
        a, b = _weights(warm), _weights(pre)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    first = _weights(out / "cells" / "pre" / "syn" / "seed0")
    assert any(not first[k].equal(b[k]) for k in b)  # the seeds differ: the check above tells them apart
    if len(__import__("flemme_core.compare.workers", fromlist=["x"]).usable_cpus()) >= 2:
        # side by side: a worker never starts warm before pre of its seed has a result
        side = tmp_path / "side"
        proc = _compare_warm(str(spec), "-o", str(side), "--workers", "2")
        assert proc.returncode == 0, proc.stderr
        assert "needs" not in proc.stderr and "skip" not in proc.stderr
        for seed in (0, 1):
            a, b = (_weights(side / "cells" / row / "syn" / f"seed{seed}") for row in ("warm", "pre"))
            assert all(a[k].equal(b[k]) for k in a)
    entries = json.loads((out / "report.json").read_text())["entries"]
    assert [e["row"] for e in entries] == ["warm", "pre"] and entries[0]["paired"]["diff"] == pytest.approx(0.0)
    # a changed reference is a changed cell: refused in one line, before anything runs
    changed = tmp_path / "changed.yaml"
    rows = [{**DEPENDENT["rows"][0], "arch_options": {"init": "${cells.pre.dir}/last.safetensors"}}, DEPENDENT["rows"][1]]
    changed.write_text(yaml.safe_dump({**DEPENDENT, "rows": rows}))
    proc = _compare_warm(str(changed), "-o", str(out))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "cells/warm/syn/seed0 was run with a different config (model.arch_options.init changed)" in proc.stderr


def _ref_row(name: str, ref: str) -> dict:
    return {"name": name, "encoder": "tiny", "arch": "unet", "arch_options": {"init": ref}}


@pytest.mark.parametrize("rows,fragment", [
    ([_ref_row("a", "${cells.b.checkpoint}"), _ref_row("b", "${cells.a.checkpoint}")],
     "rows need each other's cells in a cycle (a -> b -> a)"),
    ([_ref_row("a", "${cells.a.checkpoint}")], "cycle (a -> a)"),
    ([_ref_row("a", "${cells.pree.checkpoint}"), {"name": "pre", "encoder": "tiny", "arch": "unet"}],
     "unknown row in row a's ${cells.ROW...} reference: 'pree'; did you mean 'pre'?"),
    ([_ref_row("a", "${cells.pre}"), {"name": "pre", "encoder": "tiny", "arch": "unet"}],
     "'${cells.pre}' is not a cell reference; write ${cells.ROW.checkpoint}"),
    ([_ref_row("a", "${cells.pre.checkpoint}"), {"name": "pre", "encoder": "tiny", "arch": "unet", "datasets": ["x"]}],
     "row a needs row pre's cell on dataset syn, where row pre does not run"),
])
def test_bad_cell_references_are_one_line_and_write_nothing(tmp_path, rows, fragment):
    datasets = STUDY["datasets"] + [{"name": "x", "preset": "synthetic-2d"}]
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({**STUDY, "encoders": None, "architectures": None, "rows": rows, "datasets": datasets}))
    out = tmp_path / "study"
    result = CliRunner().invoke(main, ["compare", str(spec), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.strip().count("\n") == 0, result.output
    assert fragment in result.output
    assert not out.exists()


def test_a_variant_the_model_does_not_have_is_one_line(tmp_path):
    """variant: NAME evaluates one of the model's evaluation_variants(); unet has none: refused
    when the study is planned, before anything is written."""
    spec = tmp_path / "variant.yaml"
    rows = [{"name": "a", "encoder": "tiny", "arch": "unet", "variant": "teacher"}]
    spec.write_text(yaml.safe_dump({**STUDY, "encoders": None, "architectures": None, "rows": rows}))
    out = tmp_path / "study"
    result = CliRunner().invoke(main, ["compare", str(spec), "-o", str(out)])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
    assert "row a on syn: unknown evaluation variant of architecture 'unet': 'teacher'" in result.output
    assert not out.exists()


def test_a_row_with_its_own_patch_is_built_for_that_patch(tmp_path, monkeypatch):
    """A row's own ``data`` (e.g. a network that needs sides divisible by 32 on a dataset whose
    patch is 48) is checked and its model built with that data, not the dataset's."""
    from flemme_core.compare import cells
    from flemme_core.compare.study import load_study

    spec = tmp_path / "own-patch.yaml"
    rows = [{"name": "small", "encoder": "tiny", "arch": "unet"},
            {"name": "large", "encoder": "tiny", "arch": "unet", "data": {"patch_size": [16, 16]}}]
    spec.write_text(yaml.safe_dump({**{k: STUDY[k] for k in ("datasets", "model", "threads")}, "name": "own",
                                    "seeds": 1, "budget": {"steps": 2}, "rows": rows}))
    infos, built = {}, {}
    real_info, real_model = cells._data_info, cells._model

    def data_info(data, name):
        infos[tuple(data["patch_size"])] = real_info(data, name)
        return infos[tuple(data["patch_size"])]

    def model(config, info, cell):
        built[cell.row.id] = info
        return real_model(config, info, cell)

    monkeypatch.setattr(cells, "_data_info", data_info)
    monkeypatch.setattr(cells, "_model", model)
    cells.plan(load_study(str(spec)), tmp_path / "out")
    assert set(infos) == {(32, 32), (16, 16)}
    assert built["small"] is infos[(32, 32)] and built["large"] is infos[(16, 16)]


def _processes_running(cell: Path) -> list[int]:
    """Pids whose command line names this cell folder (a cell's process)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "compare.measure" in cmdline and str(cell) in cmdline:
                found.append(int(proc.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)])
def test_a_stopped_study_leaves_no_cell_training(tmp_path, sig):
    """SIGTERM (a batch scheduler's time limit) stops the study as Ctrl-C does: the cell's process
    is terminated and the exit code says which signal; SIGKILL of the study takes the cell down
    too (it trains under the study's lock, which dies with it)."""
    spec = tmp_path / "long.yaml"
    spec.write_text(yaml.safe_dump({**STUDY, "seeds": 1, "budget": {"steps": 100000}}))
    out = tmp_path / "out"
    cell = out / "cells" / "tiny+unet" / "syn" / "seed0"
    proc = subprocess.Popen([sys.executable, "-m", "flemme_core", "compare", str(spec), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (cell / "metrics.jsonl").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.1)
    assert _processes_running(cell)
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert "interrupted; run the same command again" in err and "Traceback" not in err
    deadline = time.time() + 30
    while _processes_running(cell):
        assert time.time() < deadline, "the cell's process outlived the study"
        time.sleep(0.2)


def test_a_kept_study_rebuilds_the_same_report_without_checkpoints(tmp_path, study_file, full):
    """benchmarks/keep_study.py keeps only the cells' small files in git; --table-only on that copy
    must give the report of the study folder it came from."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from keep_study import keep
    finally:
        sys.path.pop(0)
    kept = tmp_path / "kept"
    assert keep(full, kept) == len(ROWS) * STUDY["seeds"]
    assert not list(kept.rglob("*.safetensors"))
    proc = _compare("--table-only", "-o", str(kept))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((kept / "report.json").read_text())["entries"] == json.loads((full / "report.json").read_text())["entries"]
    again = _compare(str(study_file), "-o", str(kept))  # a later run continues from the kept cells: nothing retrained
    assert again.returncode == 0, again.stderr
    assert f"{len(ROWS) * STUDY['seeds']} finished, 0 to run" in again.stderr
