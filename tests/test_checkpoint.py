"""Atomic, checked safetensors checkpoints and the helpers that flatten training state."""

import hashlib
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from minildm import checkpoint


def some_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g),
        "half": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 2, generator=g).bfloat16(),
        "count": torch.arange(6).reshape(2, 3),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "strided": torch.randn(4, 6, generator=g).t(),  # not contiguous
    }


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_round_trip_keeps_every_tensor_dtype_shape_and_value_and_the_metadata(tmp_path):
    path = tmp_path / "c.safetensors"
    meta = {"step": 7, "name": "toy", "nested": {"betas": [0.9, 0.999], "flag": None}}
    tensors = some_tensors()
    checkpoint.save(path, tensors, meta)
    loaded, loaded_meta = checkpoint.load(path)
    assert_same_tensors(loaded, tensors)
    assert loaded_meta == meta
    checkpoint.save(path, {"x": torch.ones(1)})
    assert checkpoint.load(path)[1] == {}


def test_sha256_is_the_hash_of_the_file_bytes(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, some_tensors(), {"a": 1})
    assert checkpoint.sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_written_files_get_the_permissions_of_a_plain_open_not_mkstemps_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoint.write_atomic(tmp_path / "f.bin", b"abc")
        (tmp_path / "plain.bin").write_bytes(b"abc")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == (tmp_path / "plain.bin").stat().st_mode & 0o777 == 0o644


def test_crash_half_way_through_a_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    old = {"w": torch.zeros(100)}
    checkpoint.save(path, old, {"step": 1})
    before = path.read_bytes()

    def crash(fd):  # the disk fills up half-way through the new file
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", crash)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(path, {"w": torch.ones(100)}, {"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    tensors, meta = checkpoint.load(path)
    assert torch.equal(tensors["w"], old["w"]) and meta == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_failed_rename_removes_the_temp_file(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(checkpoint.os, "replace", refuse)
    with pytest.raises(PermissionError):
        checkpoint.save(tmp_path / "c.safetensors", {"w": torch.ones(3)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip a data byte", "edit the metadata", "garbage"])
def test_damaged_file_raises_an_error_naming_it(tmp_path, damage):
    path = tmp_path / "damaged.safetensors"
    checkpoint.save(path, {"w": torch.linspace(0, 1, 64)}, {"note": "abc"})
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) - 50]
    elif damage == "flip a data byte":
        raw[-3] ^= 0x01  # a still-valid float: only the stored sha256 can notice
    elif damage == "edit the metadata":
        raw = raw.replace(b"abc", b"abd")  # still valid JSON with the same length
    else:
        raw = bytearray(b"\xff" * 40)
    path.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError, match="damaged.safetensors"):
        checkpoint.load(path)


def test_missing_file_and_foreign_file_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        checkpoint.load(tmp_path / "nothere.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, foreign)
    with pytest.raises(checkpoint.CheckpointError, match=r"foreign.safetensors.*no minildm metadata"):
        checkpoint.load(foreign)


def test_save_rejects_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="tensors"):
        checkpoint.save(tmp_path / "a.safetensors", {"w": [1.0, 2.0]})
    with pytest.raises(TypeError, match="metadata"):
        checkpoint.save(tmp_path / "a.safetensors", {"w": torch.ones(1)}, metadata=["step", 1])
    with pytest.raises(TypeError):  # a module is not JSON
        checkpoint.save(tmp_path / "a.safetensors", {"w": torch.ones(1)}, {"model": nn.Linear(1, 1)})
    assert list(tmp_path.iterdir()) == []


def adam_steps(model, optimizer, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        optimizer.zero_grad()
        model(torch.randn(8, 3, generator=g)).pow(2).mean().backward()
        optimizer.step()


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    # AdamW after 3 steps, saved and restored into a fresh copy: the next steps must agree bit for bit
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1, betas=(0.8, 0.95))
    adam_steps(model, opt, 3, seed=1)
    opt_tensors, opt_meta = checkpoint.flatten_optimizer(opt, "optimizer.")
    assert {"optimizer.0.exp_avg", "optimizer.0.exp_avg_sq", "optimizer.1.step"} <= opt_tensors.keys()
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {**checkpoint.flatten_module(model, "model."), **opt_tensors}, {"optimizer": opt_meta})

    tensors, meta = checkpoint.load(path)
    model2 = nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)  # hyper-parameters come from the file
    checkpoint.restore_module(model2, tensors, "model.")
    checkpoint.restore_optimizer(opt2, tensors, meta["optimizer"], "optimizer.")
    assert opt2.param_groups[0]["lr"] == 0.01 and tuple(opt2.param_groups[0]["betas"]) == (0.8, 0.95)
    adam_steps(model, opt, 2, seed=2)
    adam_steps(model2, opt2, 2, seed=2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_restore_module_is_strict_about_keys():
    tensors = checkpoint.flatten_module(nn.Linear(3, 2), "model.")
    with pytest.raises(RuntimeError, match="size mismatch"):
        checkpoint.restore_module(nn.Linear(3, 4), tensors, "model.")


def test_rng_states_restore_the_generator_and_torchs_global_rng():
    g = torch.Generator().manual_seed(3)
    torch.rand(5, generator=g)
    states = {k: v.clone() for k, v in checkpoint.rng_states(g).items()}
    assert all(v.dtype == torch.uint8 for v in states.values())
    first = (torch.rand(4, generator=g), torch.rand(4))
    checkpoint.restore_rng(g, states)
    second = (torch.rand(4, generator=g), torch.rand(4))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
