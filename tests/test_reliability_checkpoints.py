"""Issue 20 (and 18/19): crafted checkpoints and configs are bounded work and one-line errors.

A real checkpoint of a 1-step run is rewritten with hostile metadata (safetensors
``save_file`` with the same tensors); configs are small crafted YAML files.
"""

from __future__ import annotations

import json
import textwrap
import time

import pytest
from reliability_helpers import FakeDist, one_error, quick, run, trained_folder
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from train_helpers import write_config

from flemme_core import registry

QUICK = quick()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return trained_folder(tmp_path_factory.mktemp("ck"), QUICK) / "run" / "last.safetensors"


def craft(ckpt, path, **changes):
    """Copy ``ckpt`` to ``path`` with metadata fields replaced (values: JSON text or a function of the parsed value)."""
    with safe_open(str(ckpt), "pt") as fh:
        meta = dict(fh.metadata())
    for key, change in changes.items():
        key = "flemme." + key
        meta[key] = change(json.loads(meta[key])) if callable(change) else change
        if not isinstance(meta[key], str):
            meta[key] = json.dumps(meta[key])
    save_file(load_file(str(ckpt)), str(path), metadata=meta)
    return path


def commands(path, folder):
    return [("info", path), ("predict", path, folder / "img.png", "-o", folder / "out.png"), ("eval", path)]


BAD_METADATA = {
    "config-null": ({"config": "null"}, "flemme.config must be a mapping"),
    "config-list": ({"config": "[1, 2]"}, "flemme.config must be a mapping"),
    "config-encoder-5": ({"config": lambda c: {**c, "encoder": 5}}, "model.encoder must be"),
    "config-no-arch": ({"config": lambda c: {k: v for k, v in c.items() if k != "arch"}}, "no 'arch'"),
    "versions-list": ({"versions": "[1]"}, "flemme.versions must be a mapping"),
    "components-list": ({"components": "[1]"}, "flemme.components must be a mapping"),
    "components-bad-kind": ({"components": {"gizmo:x": "y"}}, "flemme.components key"),
    "sw-batch-x": ({"extra": lambda e: {**e, "sw": {**e["sw"], "sw_batch_size": "x"}}}, "sw_batch_size"),
    "roi-huge": ({"extra": lambda e: {**e, "roi_size": [100000, 100000]}}, "roi_size"),
    "data-5": ({"extra": lambda e: {**e, "data": 5}}, "flemme.extra.data must be"),
    "deep-json": ({"extra": "[" * 100_000 + "]" * 100_000}, "nested too deeply"),
    "deep-config": ({"config": '{"a":' * 1000 + "1" + "}" * 1000}, "nested"),
    "not-json": ({"versions": "{nope"}, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_crafted_metadata_is_one_line_in_info_predict_and_eval(ckpt, tmp_path, case):
    changes, needle = BAD_METADATA[case]
    path = craft(ckpt, tmp_path / "bad.safetensors", **changes)
    for args in commands(path, ckpt.parent.parent):
        one_error(run(*args), needle)


@pytest.mark.parametrize("channels", [[100000, 200000], [4, 12]])
def test_config_that_does_not_fit_the_tensors_is_refused_before_allocating(ckpt, tmp_path, channels):
    path = craft(ckpt, tmp_path / "big.safetensors", config=lambda c: {**c, "encoder": {**c["encoder"],
                                                                                         "channels": channels}})
    started = time.perf_counter()
    for args in commands(path, ckpt.parent.parent)[1:]:
        line = one_error(run(*args), "does not match the model its config describes", "wrong shape",
                         "in the file but", f"[{channels[1]}, ")
        assert "[8, 4," in line  # the file's shape is named next to the model's
    assert time.perf_counter() - started < 60  # nothing of 360 GB was allocated (it would fail or swap)


def test_unbounded_preset_options_in_a_checkpoint_are_refused(ckpt, tmp_path):
    path = craft(ckpt, tmp_path / "n.safetensors", extra=lambda e: {**e, "data": {
        **e["data"], "options": {**e["data"]["options"], "num_train": 10**9}}})
    one_error(run("eval", path), "synthetic-2d options ask for", "limits")


BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 10))


@pytest.mark.parametrize("text, needle", [
    (BOMB + "model: {encoder: {name: tiny}}\n", "alias"),
    ("model:\n  arch_options: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("a: &a [*a]\n", "alias"),
])
def test_yaml_bombs_and_deep_nesting_are_one_line_in_build_and_train(tmp_path, text, needle):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    for args in (("build", "--config", path), ("train", path, "-o", tmp_path / "run")):
        one_error(run(*args), needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("section, value, needle", [
    ("model", {"encoder": 5}, "model.encoder must be a family name or a mapping"),
    ("model", [1, 2], "model: "),
    ("model", {"encoder": {"name": "tiny", "options": 5}}, "model.encoder.options must be a mapping"),
    ("model", {"loss": 5}, "model.loss must be"),
    ("model", {"encoder": {"name": "tiny", "act": [1]}}, "model.encoder.act must be a name"),
    ("data", [1], "data: must be a mapping"),
    ("train", 5, "train: must be a mapping"),
])
def test_config_sections_of_the_wrong_type_are_one_line(tmp_path, section, value, needle):
    cfg = write_config(tmp_path / "c.yaml", {**QUICK, section: value})
    commands_ = [("train", cfg, "-o", tmp_path / "run")]
    if section == "model":
        commands_.append(("build", "--config", cfg))
    for args in commands_:
        one_error(run(*args), needle)


# -- missing, disabled and claimed plugins ----------------------------------------------------
@pytest.fixture
def toy_dist(tmp_path, monkeypatch):
    """An installed (fake) distribution flemme-toyenc registering encoder 'toyenc'."""
    (tmp_path / "flemme_toyenc_mod.py").write_text(textwrap.dedent("""
        from flemme_core import hookimpl

        @hookimpl
        def register_encoders(register):
            register("toyenc", "tiny_family:encoder", "tiny under another name")
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    real = registry.importlib_metadata.distributions
    monkeypatch.setattr(registry.importlib_metadata, "distributions",
                        lambda: [*real(), FakeDist("flemme-toyenc", "1.0", {"toyenc": "flemme_toyenc_mod"})])
    registry.reset_registry()
    yield
    monkeypatch.undo()
    registry.reset_registry()


def test_a_disabled_plugin_is_reported_as_disabled_not_missing(ckpt, tmp_path, toy_dist, monkeypatch):
    path = craft(ckpt, tmp_path / "d.safetensors", components=lambda c: {**c, "encoder:toyenc": "flemme-toyenc 1.0"})
    assert run("info", path).exit_code == 0  # enabled: nothing missing
    monkeypatch.setenv("FLEMME_DISABLE_PLUGINS", "flemme-toyenc")
    registry.reset_registry()
    result = run("info", path)
    line = one_error(result, "encoder 'toyenc'", "flemme-toyenc", "installed but disabled", "FLEMME_DISABLE_PLUGINS")
    assert "not installed" not in line and "pip install" not in line
    assert "model        unet" in result.stdout  # the metadata is still shown
    monkeypatch.delenv("FLEMME_DISABLE_PLUGINS")
    monkeypatch.setenv("FLEMME_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry.reset_registry()
    one_error(run("info", path), "flemme-toyenc", "FLEMME_PLUGINS")


def test_a_missing_plugin_from_a_local_path_names_the_distribution_and_path(ckpt, tmp_path):
    path = craft(ckpt, tmp_path / "m.safetensors",
                 components=lambda c: {**c, "encoder:gone": "flemme-gone 0.3"},
                 provenance={"flemme-gone": "local path /home/me/src/flemme-gone (editable)"})
    for args in commands(path, ckpt.parent.parent):
        line = one_error(run(*args), "encoder 'gone'", "install the distribution flemme-gone that provided it",
                         "/home/me/src/flemme-gone")
        assert "pip install" not in line


@pytest.mark.parametrize("claimed", ["evil 6.6.6", "evil; rm -rf ~ 1"])
def test_a_checkpoint_cannot_choose_what_the_user_is_told_to_install(ckpt, tmp_path, claimed):
    path = craft(ckpt, tmp_path / "e.safetensors", components=lambda c: {**c, "encoder:cnn2": claimed})
    line = one_error(run("info", path), "encoder 'cnn2'")
    assert "pip install" not in line
    assert "claims (unverified" in line or "no valid distribution" in line


def test_checkpoints_record_where_their_plugins_came_from(ckpt):
    from flemme_core.provenance import provenance_of

    with safe_open(str(ckpt), "pt") as fh:
        recorded = json.loads(fh.metadata()["flemme.provenance"])
    assert isinstance(recorded, dict)
    assert provenance_of(["flemme-core"]).get("flemme-core")  # installed: a path, a URL or an index
    assert provenance_of(["surely-not-installed-xyz"]) == {}


@pytest.mark.parametrize("item, needle", [("train.sw_batch_size=x", "train.sw_batch_size must be a positive integer"),
                                          ("train.overlap=abc", "train.overlap must be a number")])
def test_eval_set_values_of_the_wrong_type_are_one_line(ckpt, item, needle):
    one_error(run("eval", ckpt, "--set", item), needle)


@pytest.mark.parametrize("section, key, value, needle", [
    ("data", "preset", 5, "data.preset must be a name"),
    ("data", "transforms", 5, "data.transforms must be a mapping"),
    ("data", "cache", "x", "data.cache must be true or false"),
    ("data", "val_fraction", "x", "data.val_fraction must be a number"),
    ("train", "metrics", 5, "train.metrics must be a metric name or a list"),
])
def test_keys_of_the_wrong_type_are_one_line(tmp_path, section, key, value, needle):
    cfg = quick()
    cfg[section][key] = value
    one_error(run("train", write_config(tmp_path / "c.yaml", cfg), "-o", tmp_path / "run"), needle)
    assert not (tmp_path / "run").exists()
