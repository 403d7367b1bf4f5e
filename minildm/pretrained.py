"""Pretrained models: load the shipped checkpoint, or train it by its recipe.

A lesson trains briefly to show the idea, then calls ``load(name)`` to show what longer
training gives. Each name has a ``Recipe``: how to build the network and how to train it.
``load`` looks in three places, in order:

1. ``data/checkpoints/NAME.safetensors``, shipped with the repository (fp16 weights), whose
   sha256 must match ``data/checkpoints/manifest.json``;
2. ``~/.cache/minildm/NAME.safetensors`` (``$MINILDM_CACHE``), a model trained on this machine;
3. the recipe itself: train now, then cache the result.

``minildm train NAME`` (``train`` below) reproduces a shipped file and records in the manifest
how it was made: steps, seconds, final metrics, the recipe, the torch version and the date.
Only safetensors files are read, so loading a checkpoint never runs code.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from minildm import checkpoint
from minildm.config import device as default_device

DATA_ENV = "MINILDM_DATA"
CACHE_ENV = "MINILDM_CACHE"


@dataclass
class Recipe:
    """How to build and how to train one named model.

    build(**config) returns an untrained network; ``config`` is stored in every checkpoint
    file, so a file rebuilds its own architecture. train(profile, progress) trains one from
    scratch (``profile``: a profile name or None; ``progress``: show a progress bar) and
    returns ``(model, final metrics, optimizer steps)``; the model must be ``build(**config)``.
    evaluate(model, profile), if given, computes those final metrics for a trained model, so
    that a shipped file can be re-scored without retraining it (``evaluate`` below).

    saved(model), if given, names the tensors a checkpoint file holds (by default the whole
    ``state_dict``). An adapter uses it to ship only what it trained: its ``build(**config)``
    loads the shipped base model and wraps it (e.g. ``lora.inject``), and ``saved`` is
    ``lora.lora_state_dict``, so the file holds the LoRA tensors alone, under peft's names.
    Loading builds the model from the file's config, checks that the file holds exactly the
    tensors ``saved`` names for it (a ``CheckpointError`` otherwise) and copies them in; every
    other weight is the base model's, as ``build`` made it.
    """

    name: str
    description: str
    build: Callable[..., nn.Module]
    config: dict
    train: Callable[[str | None, bool], tuple[nn.Module, dict, int]]
    recipe: str  # in words, for the manifest and the lessons: data, steps, batch size, lr, ...
    evaluate: Callable[[nn.Module, str | None], dict] | None = None
    saved: Callable[[nn.Module], dict[str, Tensor]] | None = None


REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add ``recipe`` under its name (a later registration of the same name replaces it)."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    REGISTRY[recipe.name] = recipe
    return recipe


def _registry() -> dict[str, Recipe]:
    """The registry, with the shipped models' recipes (``minildm.recipes``) registered first."""
    import minildm.recipes  # noqa: F401  (registering is importing)

    return REGISTRY


def names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_registry())


def data_dir() -> Path:
    """``$MINILDM_DATA``, else the repository's ``data/`` folder."""
    return Path(os.environ.get(DATA_ENV) or Path(__file__).parents[1] / "data")


def cache_dir() -> Path:
    """``$MINILDM_CACHE``, else ``~/.cache/minildm``: models trained on this machine."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "minildm")


def shipped_path(name: str) -> Path:
    return data_dir() / "checkpoints" / f"{name}.safetensors"


def manifest_path() -> Path:
    return data_dir() / "checkpoints" / "manifest.json"


def cached_path(name: str) -> Path:
    return cache_dir() / f"{name}.safetensors"


def load(name: str, *, device: torch.device | str | None = None, train_if_missing: bool = True,
         progress: bool = True) -> nn.Module:
    """The model ``name`` in eval mode on ``device``: shipped, else cached, else trained now."""
    recipe = _recipe(name)
    device = torch.device(device) if device is not None else default_device()
    shipped, cached = shipped_path(name), cached_path(name)
    if shipped.exists():
        _verify_sha256(name, shipped)
        model = _load_file(recipe, shipped)
    elif cached.exists():
        model = _load_file(recipe, cached)
    elif train_if_missing:
        if progress:
            print(f"{name}: no shipped or cached checkpoint; training it by its recipe ({recipe.recipe})")
        model, metrics, steps = recipe.train(None, progress)
        cached.parent.mkdir(parents=True, exist_ok=True)
        _save_file(recipe, cached, model, {"steps": steps, "metrics": metrics}, half=False)
        if progress:
            print(f"{name}: cached in {cached}")
    else:
        raise FileNotFoundError(f"no checkpoint for {name!r}: neither {shipped} nor {cached} exists. "
                                f"Call load({name!r}, train_if_missing=True) to train it now (cached "
                                f"afterwards), or run `minildm train {name}` to write {shipped}.")
    return model.to(device).eval()


def train(name: str, profile: str | None = None) -> dict:
    """Train ``name`` by its recipe, write ``data/checkpoints/NAME.safetensors`` (fp16) and its
    manifest entry; return the entry. This is what ``minildm train NAME`` runs."""
    recipe = _recipe(name)
    start = time.perf_counter()
    model, metrics, steps = recipe.train(profile, True)
    seconds = time.perf_counter() - start
    path = shipped_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_file(recipe, path, model, {"steps": steps, "metrics": metrics}, half=True)
    entry = {"sha256": checkpoint.sha256(path), "bytes": path.stat().st_size, "steps": steps,
             "seconds": round(seconds, 1), "metrics": metrics, "recipe": recipe.recipe, "profile": profile,
             "config": recipe.config, "torch": torch.__version__,
             "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    manifest = _read_manifest()
    manifest[name] = entry
    checkpoint.write_atomic(manifest_path(), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    print(f"{name}: wrote {path} ({entry['bytes'] / 1e6:.2f} MB, sha256 {entry['sha256'][:12]}…) "
          f"after {steps} steps in {seconds:.0f} s; metrics {metrics}")
    return entry


def evaluate(name: str, profile: str | None = None) -> dict:
    """Re-score the shipped ``NAME.safetensors`` by its recipe's ``evaluate`` and record the
    metrics in the manifest (with the date); the weights, sha256 and training record (steps,
    seconds, the ``loss...`` metrics) stay as they are. This is what ``minildm evaluate NAME`` runs."""
    recipe = _recipe(name)
    if recipe.evaluate is None:
        raise ValueError(f"{name!r} has no evaluate step; its metrics come from training (minildm train {name})")
    path = shipped_path(name)
    if not path.exists():
        raise FileNotFoundError(f"no shipped checkpoint {path} to evaluate; run `minildm train {name}` first")
    _verify_sha256(name, path)
    metrics = recipe.evaluate(_load_file(recipe, path).eval(), profile)
    manifest = _read_manifest()
    # the training losses are a record of the run, not a score: they stay
    training = {k: v for k, v in manifest[name].get("metrics", {}).items() if k.startswith("loss")}
    metrics = {**training, **metrics}
    manifest[name] = {**manifest[name], "metrics": metrics, "recipe": recipe.recipe,
                      "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    checkpoint.write_atomic(manifest_path(), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    print(f"{name}: metrics {metrics}")
    return manifest[name]


def _recipe(name: str) -> Recipe:
    if name not in _registry():
        raise ValueError(f"unknown pretrained model {name!r}; registered: {names()}")
    return REGISTRY[name]


def _read_manifest() -> dict:
    path = manifest_path()
    return json.loads(path.read_text()) if path.exists() else {}


def _verify_sha256(name: str, path: Path) -> None:
    expected = _read_manifest().get(name, {}).get("sha256")
    actual = checkpoint.sha256(path)
    if expected != actual:
        raise checkpoint.CheckpointError(
            f"{path} does not match {manifest_path()}: expected sha256 {expected or '(no manifest entry)'}, "
            f"file has {actual}. Restore the file (git checkout) or regenerate both with `minildm train {name}`.")


def _save_file(recipe: Recipe, path: Path, model: nn.Module, info: dict, half: bool) -> None:
    """Weights (fp16 if ``half``) + the config that rebuilds them, checked against ``build(**config)``."""
    state = {k: v.detach().cpu() for k, v in _saved_tensors(recipe, model).items()}
    # refuse a file its own config cannot rebuild
    _load_tensors(recipe, recipe.build(**recipe.config), state, f"the trained {recipe.name}")
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        overflow = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if overflow:
            raise ValueError(f"{recipe.name}: weights {overflow} do not fit in float16 (|w| > 65504 or NaN)")
    checkpoint.save(path, state, {"name": recipe.name, "config": recipe.config, **info})


def _load_file(recipe: Recipe, path: Path) -> nn.Module:
    tensors, meta = checkpoint.load(path)
    return _load_tensors(recipe, recipe.build(**meta["config"]), tensors, path)


def _saved_tensors(recipe: Recipe, model: nn.Module) -> dict[str, Tensor]:
    """The tensors a checkpoint of ``recipe`` holds: ``recipe.saved(model)``, else the whole state_dict."""
    return model.state_dict() if recipe.saved is None else recipe.saved(model)


def _load_tensors(recipe: Recipe, model: nn.Module, tensors: dict[str, Tensor], source) -> nn.Module:
    """Copy ``tensors`` (fp16 or float32) into ``model``: all of its state_dict, or exactly the
    tensors ``recipe.saved`` names for it (the rest of the model stays as built)."""
    if recipe.saved is None:
        model.load_state_dict(tensors)
        return model
    expected = _saved_tensors(recipe, model).keys()
    if tensors.keys() != expected:
        missing, unexpected = sorted(expected - tensors.keys()), sorted(tensors.keys() - expected)
        raise checkpoint.CheckpointError(
            f"{source} does not hold the tensors {recipe.name}'s saved() names for its config: missing "
            f"{missing[:3]}{' ...' if len(missing) > 3 else ''} ({len(missing)}), unexpected "
            f"{unexpected[:3]}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)})")
    model.load_state_dict(tensors, strict=False)  # the keys are checked above; shapes are checked here
    return model
