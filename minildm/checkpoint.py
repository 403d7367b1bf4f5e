"""Checkpoints: safetensors files that are written atomically and checked when read.

A checkpoint is a flat ``{name: Tensor}`` dictionary plus a JSON dictionary of metadata,
stored with safetensors (Hugging Face's format: a JSON header, then raw tensor bytes). It
holds no code, so reading one can never run anything, unlike ``torch.load`` on a pickle.

Two things a training run needs that the format does not give by itself:

* atomic writes: the bytes go to a temporary file in the same folder, are flushed to disk,
  and only then renamed over the old file (``os.replace`` is atomic on one file system).
  A crash mid-write leaves the previous checkpoint as it was.
* integrity: safetensors catches a truncated file but not a flipped byte inside the
  tensor data, so the header also stores a sha256 of the metadata and every tensor, and
  ``load`` recomputes it.

The helpers below flatten what a training run must save (a module's ``state_dict``, an
optimizer's ``state_dict``, random number generator states) into tensors + metadata and back.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _serialize
from torch import Tensor, nn

METADATA_KEY = "minildm.metadata"
SHA256_KEY = "minildm.sha256"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: corrupt, truncated, or not ours."""


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either the old bytes or all new ones.

    Temp file in the same folder -> write, flush, fsync -> ``os.replace`` -> fsync the folder
    (so the rename itself survives a power cut). On any failure the temp file is removed.
    The file gets the permissions a plain ``open(path, "wb")`` would give (0o666 less the
    umask), not mkstemp's owner-only 0o600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its rename is already durable
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _content_sha256(tensors: dict[str, Tensor], metadata_json: str) -> str:
    """sha256 over the metadata and every tensor's name, dtype, shape and bytes, by name."""
    digest = hashlib.sha256(metadata_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict | None = None) -> None:
    """Write ``tensors`` and JSON-serialisable ``metadata`` to the safetensors file ``path``, atomically."""
    if not isinstance(tensors, dict) or not all(isinstance(v, Tensor) for v in tensors.values()):
        raise TypeError("tensors must be a dict mapping names to torch.Tensor")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    # safetensors wants contiguous CPU tensors that share no memory: give it fresh copies
    tensors = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    metadata_json = json.dumps(metadata or {}, allow_nan=False)
    header = {METADATA_KEY: metadata_json, SHA256_KEY: _content_sha256(tensors, metadata_json)}
    write_atomic(path, _serialize(tensors, metadata=header))


def load(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Read a file written by ``save``: ``(tensors on the CPU, metadata)``.

    Raises FileNotFoundError if there is no file, and CheckpointError (naming the file) if
    it is truncated, corrupt, or lacks the metadata ``save`` writes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    if METADATA_KEY not in header or SHA256_KEY not in header:
        raise CheckpointError(f"{path} has no minildm metadata: it was not written by minildm.checkpoint.save")
    if _content_sha256(tensors, header[METADATA_KEY]) != header[SHA256_KEY]:
        raise CheckpointError(f"{path} is corrupt: its contents no longer match the sha256 stored in its header")
    return tensors, json.loads(header[METADATA_KEY])


# --- what a training run saves, flattened to tensors + metadata and back -----------------


def flatten_module(module: nn.Module, prefix: str) -> dict[str, Tensor]:
    """``module.state_dict()`` with every key prefixed, e.g. ``model.net.0.weight``."""
    return {prefix + k: v for k, v in module.state_dict().items()}


def restore_module(module: nn.Module, tensors: dict[str, Tensor], prefix: str) -> None:
    """Load the ``prefix``-ed tensors into ``module`` (strict: every key must match)."""
    module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


def flatten_optimizer(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict]:
    """An optimizer's state as tensors (``prefix.PARAM.KEY``, e.g. Adam's exp_avg) + metadata.

    Tensor-valued per-parameter state goes to the tensors; everything else (the param
    groups' hyper-parameters, plain-number state) goes to the metadata.
    """
    sd = optimizer.state_dict()
    tensors, other_state = {}, {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}{index}.{key}"] = value
            else:
                other_state.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": other_state}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], metadata: dict,
                      prefix: str) -> None:
    """Inverse of ``flatten_optimizer``: rebuild the state_dict and load it into ``optimizer``."""
    state: dict[int, dict] = {int(i): dict(values) for i, values in metadata["state"].items()}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": metadata["param_groups"]})


def rng_states(generator: torch.Generator) -> dict[str, Tensor]:
    """The states (uint8 tensors) of ``generator``, torch's global CPU RNG and, if present, CUDA's."""
    states = {"rng.generator": generator.get_state(), "rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["rng.cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng(generator: torch.Generator, tensors: dict[str, Tensor]) -> None:
    """Put back the states saved by ``rng_states``."""
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
