"""Train-or-load registry: shipped file with sha256 check, cache fallback, train if missing."""

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import minildm
from minildm import checkpoint, cli, pretrained, train

NAME = "tiny-linear"


def tiny_recipe(calls, config=None, out_features=None):
    config = config or {"in_features": 3, "out_features": 2}

    def train_tiny(profile, progress):
        calls.append((profile, progress))
        torch.manual_seed(len(calls))
        model = nn.Linear(config["in_features"], out_features or config["out_features"])
        x = torch.randn(16, config["in_features"])
        result = train.fit(model, lambda m, xb, g: m(xb).pow(2).mean(), x, steps=3, batch_size=4,
                           device="cpu", progress=progress)
        return model, {"loss": result.losses[-1]}, result.step

    return pretrained.Recipe(name=NAME, description="a 3 -> 2 linear map", build=nn.Linear, config=config,
                             train=train_tiny, recipe="3 AdamW steps, batch 4, lr 1e-3")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Fresh data and cache folders, a registry holding only the tiny recipe; returns its train calls."""
    monkeypatch.setenv(pretrained.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "REGISTRY", {})
    calls = []
    pretrained.register(tiny_recipe(calls))
    return calls


def test_train_writes_an_fp16_file_and_a_manifest_entry_with_its_sha256(env):
    entry = pretrained.train(NAME, profile="smoke")
    path = pretrained.data_dir() / "checkpoints" / f"{NAME}.safetensors"
    manifest = json.loads((pretrained.data_dir() / "checkpoints" / "manifest.json").read_text())
    assert manifest == {NAME: entry}
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["bytes"] == path.stat().st_size and entry["steps"] == 3 and entry["profile"] == "smoke"
    assert entry["recipe"] == "3 AdamW steps, batch 4, lr 1e-3" and entry["torch"] == torch.__version__
    assert set(entry["metrics"]) == {"loss"} and entry["seconds"] >= 0 and entry["date"]
    tensors, meta = checkpoint.load(path)
    assert all(t.dtype == torch.float16 for t in tensors.values())
    assert meta["config"] == {"in_features": 3, "out_features": 2}
    assert env == [("smoke", True)]
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files


def test_train_keeps_the_other_manifest_entries(env):
    manifest = pretrained.data_dir() / "checkpoints" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"other": {"sha256": "abc"}}))
    pretrained.train(NAME)
    assert set(json.loads(manifest.read_text())) == {"other", NAME}


def test_the_cli_command_runs_train(env):
    assert cli.main(["train", NAME]) == 0
    assert (pretrained.data_dir() / "checkpoints" / f"{NAME}.safetensors").exists()


def test_evaluate_rescores_the_shipped_file_and_changes_only_the_metrics(env, monkeypatch):
    pretrained.train(NAME)
    path = pretrained.data_dir() / "checkpoints" / f"{NAME}.safetensors"
    before = json.loads(pretrained.manifest_path().read_text())[NAME]
    seen = []

    def weight_norm(model, profile):
        seen.append((type(model).__name__, model.training, profile))
        return {"weight_norm": float(model.weight.detach().norm())}

    monkeypatch.setattr(pretrained.REGISTRY[NAME], "evaluate", weight_norm)
    assert cli.main(["evaluate", NAME, "--profile", "smoke"]) == 0
    after = json.loads(pretrained.manifest_path().read_text())[NAME]
    tensors, _ = checkpoint.load(path)
    assert after["metrics"] == {"loss": before["metrics"]["loss"], "weight_norm": float(tensors["weight"].float().norm())}
    assert seen == [("Linear", False, "smoke")]
    assert after["evaluated"] and after["sha256"] == before["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert {k: v for k, v in after.items() if k not in ("metrics", "evaluated")} == \
        {k: v for k, v in before.items() if k != "metrics"}


def test_evaluate_refuses_a_recipe_without_an_evaluate_step_or_a_missing_file(env, monkeypatch):
    with pytest.raises(ValueError, match="has no evaluate step"):
        pretrained.evaluate(NAME)
    monkeypatch.setattr(pretrained.REGISTRY[NAME], "evaluate", lambda model, profile: {})
    with pytest.raises(FileNotFoundError, match="no shipped checkpoint"):
        pretrained.evaluate(NAME)


def test_load_shipped_file_gives_the_trained_weights_within_fp16_rounding(env, monkeypatch):
    trained = {}
    recipe_train = pretrained.REGISTRY[NAME].train

    def keep(profile, progress):
        model, metrics, steps = recipe_train(profile, progress)
        trained.update({k: v.clone() for k, v in model.state_dict().items()})
        return model, metrics, steps

    monkeypatch.setattr(pretrained.REGISTRY[NAME], "train", keep)
    pretrained.train(NAME)
    model = pretrained.load(NAME, device="cpu")
    assert isinstance(model, nn.Linear) and not model.training and len(env) == 1  # loaded, not retrained
    for k, w in trained.items():
        loaded = model.state_dict()[k]
        assert loaded.dtype == torch.float32
        assert torch.equal(loaded, w.half().float())
        # fp16 keeps 11 significant bits: relative error at most 2^-11 (plus subnormal spacing 2^-24)
        assert ((loaded - w).abs() <= 2**-11 * w.abs() + 2**-24).all()


def test_load_builds_the_architecture_stored_in_the_file(env, monkeypatch):
    pretrained.train(NAME)
    monkeypatch.setattr(pretrained.REGISTRY[NAME], "config", {"in_features": 3, "out_features": 7})
    assert pretrained.load(NAME, device="cpu").out_features == 2


def test_sha256_mismatch_names_the_file_and_both_hashes(env):
    entry = pretrained.train(NAME)
    path = pretrained.data_dir() / "checkpoints" / f"{NAME}.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    actual = hashlib.sha256(bytes(raw)).hexdigest()
    with pytest.raises(checkpoint.CheckpointError, match=rf"{NAME}.safetensors.*{entry['sha256']}.*{actual}"):
        pretrained.load(NAME)


def test_shipped_file_without_a_manifest_entry_is_refused(env):
    pretrained.train(NAME)
    (pretrained.data_dir() / "checkpoints" / "manifest.json").write_text("{}")
    with pytest.raises(checkpoint.CheckpointError, match="no manifest entry"):
        pretrained.load(NAME)


def test_missing_checkpoint_is_trained_once_then_read_from_the_cache(env):
    first = pretrained.load(NAME, device="cpu", progress=False)
    assert env == [(None, False)] and not first.training
    cached = pretrained.cache_dir() / f"{NAME}.safetensors"
    assert cached.exists() and not (pretrained.data_dir() / "checkpoints" / f"{NAME}.safetensors").exists()
    second = pretrained.load(NAME, device="cpu")
    assert len(env) == 1  # not trained again
    for k, v in first.state_dict().items():
        assert torch.equal(second.state_dict()[k], v)  # the cache keeps float32 exactly


def test_corrupt_cache_file_is_named(env):
    cached = pretrained.cache_dir() / f"{NAME}.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(checkpoint.CheckpointError, match=str(cached)):
        pretrained.load(NAME)


def test_without_training_a_missing_checkpoint_explains_both_options(env):
    with pytest.raises(FileNotFoundError, match=r"train_if_missing=True.*minildm train tiny-linear"):
        pretrained.load(NAME, train_if_missing=False)
    assert env == []


def test_unknown_name_lists_the_registered_ones(env):
    with pytest.raises(ValueError, match=r"unknown pretrained model 'nope'; registered: \['tiny-linear'\]"):
        pretrained.load("nope")
    with pytest.raises(ValueError, match="unknown pretrained model"):
        pretrained.train("nope")
    assert pretrained.names() == [NAME]


def test_a_model_its_own_config_cannot_rebuild_is_not_written(env, monkeypatch):
    monkeypatch.setitem(pretrained.REGISTRY, NAME, tiny_recipe([], out_features=5))
    with pytest.raises(RuntimeError, match="size mismatch"):
        pretrained.train(NAME)
    assert not (pretrained.data_dir() / "checkpoints" / f"{NAME}.safetensors").exists()


def test_register_accepts_only_recipes():
    with pytest.raises(TypeError, match="Recipe"):
        pretrained.register({"name": "x"})


def test_default_folders(monkeypatch):
    monkeypatch.delenv(pretrained.DATA_ENV, raising=False)
    monkeypatch.delenv(pretrained.CACHE_ENV, raising=False)
    assert pretrained.data_dir() == Path(minildm.__file__).resolve().parents[1] / "data"
    assert (pretrained.data_dir() / "checkpoints" / "manifest.json").exists()
    assert pretrained.cache_dir() == Path.home() / ".cache" / "minildm"


# --- adapters: a recipe whose file holds only the tensors it trained (Recipe.saved) ------------

ADAPTER = "tiny-adapter"


def adapter_recipe(calls):
    """LoRA (r = 2) on the to_q of a fixed 'pretrained' base; the file holds the LoRA tensors only."""
    from minildm import lora

    def build(*, r, alpha):
        torch.manual_seed(123)  # the base: the same weights every time it is built, as a shipped base is
        model = nn.Sequential(OrderedDict(to_q=nn.Linear(4, 4), head=nn.Linear(4, 1)))
        lora.inject(model, targets=("to_q",), r=r, alpha=alpha)
        return model

    def train_adapter(profile, progress):
        calls.append(profile)
        model = build(r=2, alpha=2)
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        result = train.fit(model, lambda m, xb, g: (m(xb) - 1).pow(2).mean(), x, steps=5, batch_size=8, lr=0.1,
                           device="cpu", progress=progress)
        return model, {"loss": result.losses[-1]}, result.step

    return pretrained.Recipe(name=ADAPTER, description="LoRA on a tiny base", build=build,
                             config={"r": 2, "alpha": 2}, train=train_adapter, recipe="5 AdamW steps",
                             saved=lora.lora_state_dict)


@pytest.fixture
def adapter_env(env):
    calls = []
    pretrained.register(adapter_recipe(calls))
    return calls


def test_an_adapter_file_holds_only_the_tensors_saved_names(adapter_env):
    pretrained.train(ADAPTER)
    tensors, meta = checkpoint.load(pretrained.shipped_path(ADAPTER))
    assert set(tensors) == {"to_q.lora_A.weight", "to_q.lora_B.weight"}  # peft's names, no base weights
    assert tuple(tensors["to_q.lora_A.weight"].shape) == (2, 4) and tuple(tensors["to_q.lora_B.weight"].shape) == (4, 2)
    assert meta["config"] == {"r": 2, "alpha": 2}


def test_loading_an_adapter_gives_its_trained_tensors_on_the_base_as_built(adapter_env, monkeypatch):
    trained = {}
    recipe_train = pretrained.REGISTRY[ADAPTER].train

    def keep(profile, progress):
        model, metrics, steps = recipe_train(profile, progress)
        trained.update({k: v.clone() for k, v in model.state_dict().items()})
        return model, metrics, steps

    monkeypatch.setattr(pretrained.REGISTRY[ADAPTER], "train", keep)
    pretrained.train(ADAPTER)
    model = pretrained.load(ADAPTER, device="cpu")
    assert adapter_env == [None]  # loaded, not retrained
    loaded = model.state_dict()
    assert trained["to_q.lora_B.weight"].abs().sum() > 0  # training moved B away from its zero start
    for key in ("to_q.lora_A.weight", "to_q.lora_B.weight"):
        assert torch.equal(loaded[key], trained[key].half().float())
    for key in ("to_q.base_layer.weight", "to_q.base_layer.bias", "head.weight", "head.bias"):
        assert torch.equal(loaded[key], trained[key])  # the frozen base: exactly as built, never stored


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_an_adapter_file_with_other_tensors_is_refused_and_named(adapter_env, change):
    model = adapter_recipe([]).build(r=2, alpha=2)
    tensors = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    if change == "missing":
        del tensors["to_q.lora_B.weight"]
    else:
        tensors["head.weight"] = model.head.weight.detach().clone()
    cached = pretrained.cached_path(ADAPTER)
    cached.parent.mkdir(parents=True)
    checkpoint.save(cached, tensors, {"name": ADAPTER, "config": {"r": 2, "alpha": 2}})
    expected = r"missing \['to_q.lora_B.weight'\]" if change == "missing" else r"unexpected \['head.weight'\]"
    with pytest.raises(checkpoint.CheckpointError, match=rf"{cached}.*{expected}"):
        pretrained.load(ADAPTER, device="cpu", train_if_missing=False)
