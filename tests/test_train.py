"""The shared training loop: exact resume, NaN guard, clipping, EMA, checkpoints, bad input."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from minildm import checkpoint, train

CPU = torch.device("cpu")


def toy_data(n=32):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]])  # (n, 3), (n, 1)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.3), nn.Linear(16, 1))


def noisy_mse(model, batch, generator):
    # input noise from the loop's generator, dropout from torch's global RNG: both must resume
    x, y = batch
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    return (model(x + 0.1 * noise) - y).pow(2).mean()


def run(steps, **kw):
    model = make_model()
    kw = {"batch_size": 8, "lr": 1e-2, "device": CPU, "progress": False, **kw}
    return model, train.fit(model, noisy_mse, toy_data(), steps=steps, **kw)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, ema_decay):
    straight, full = run(20, ema_decay=ema_decay)

    path = tmp_path / "run.safetensors"
    _, first = run(10, ema_decay=ema_decay, checkpoint=path)
    assert checkpoint.load(path)[1]["step"] == 10 and first.step == 10
    torch.manual_seed(999)  # the caller's global RNG is elsewhere now: resume must restore it
    resumed, second = run(20, ema_decay=ema_decay, checkpoint=path, resume=True)

    assert second.step == 20 and len(second.losses) == 20
    assert second.losses == full.losses
    assert second.losses[:10] == first.losses
    for p, q in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)
    if ema_decay is not None:
        for p, q in zip(full.ema.state_dict().values(), second.ema.state_dict().values()):
            assert torch.equal(p, q)
    else:
        assert full.ema is None and second.ema is None


def test_run_killed_mid_way_resumes_from_its_last_periodic_checkpoint(tmp_path):
    _, full = run(20, ema_decay=0.9)
    path, calls = tmp_path / "run.safetensors", []

    def dies_at_step_13(model, batch, generator):
        calls.append(1)
        if len(calls) == 13:
            raise KeyboardInterrupt
        return noisy_mse(model, batch, generator)

    with pytest.raises(KeyboardInterrupt):
        train.fit(make_model(), dies_at_step_13, toy_data(), steps=20, batch_size=8, lr=1e-2, ema_decay=0.9,
                  device=CPU, progress=False, checkpoint=path, checkpoint_every=5)
    assert checkpoint.load(path)[1]["step"] == 10
    _, resumed = run(20, ema_decay=0.9, checkpoint=path, checkpoint_every=5, resume=True)
    assert resumed.losses == full.losses


def test_resume_without_a_checkpoint_file_starts_afresh(tmp_path):
    _, fresh = run(5, checkpoint=tmp_path / "new.safetensors", resume=True)
    _, plain = run(5)
    assert fresh.step == 5 and fresh.losses == plain.losses


def test_resume_refuses_changed_settings_and_too_few_steps(tmp_path):
    path = tmp_path / "run.safetensors"
    run(6, checkpoint=path)
    with pytest.raises(ValueError, match=r"batch_size=8 \(now 4\)"):
        run(10, batch_size=4, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="steps=3 is fewer than the 6"):
        run(3, checkpoint=path, resume=True)


def test_checkpoint_holds_model_optimizer_losses_and_rng(tmp_path):
    path = tmp_path / "run.safetensors"
    model, result = run(7, checkpoint=path, checkpoint_every=3, ema_decay=0.5)
    tensors, meta = checkpoint.load(path)
    assert meta["step"] == 7 and meta["settings"]["batch_size"] == 8
    assert tensors["losses"].tolist() == result.losses
    for k, v in model.state_dict().items():
        assert torch.equal(tensors["model." + k], v)
        assert torch.equal(tensors["ema." + k], result.ema.state_dict()[k])
    assert {"optimizer.0.exp_avg", "rng.generator", "rng.torch"} <= tensors.keys()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    path, k = tmp_path / "run.safetensors", 4
    model, seen = make_model(), []

    def loss_fn(model, batch, generator):
        seen.append({n: p.detach().clone() for n, p in model.state_dict().items()})
        loss = noisy_mse(model, batch, generator)
        return loss * math.nan if len(seen) == k else loss

    with pytest.raises(train.NonFiniteLossError, match=f"nan at step {k}") as info:
        train.fit(model, loss_fn, toy_data(), steps=10, batch_size=8, device=CPU, progress=False,
                  checkpoint=path, checkpoint_every=1)
    assert info.value.step == k
    tensors, meta = checkpoint.load(path)
    assert meta["step"] == k - 1 and len(tensors["losses"]) == k - 1
    for name, before_bad_step in seen[-1].items():  # weights after step k-1, saved and in memory
        assert torch.equal(tensors["model." + name], before_bad_step)
        assert torch.equal(model.state_dict()[name], before_bad_step)


def test_grad_clipping_matches_a_hand_written_clipped_adam():
    # loss_k = s_k * <w, x>  =>  grad_k = s_k x ; clipped: g * min(1, c / ||g||); Adam by hand
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    scales, lr, c, (b1, b2), eps = [50.0, 0.3, -20.0, 0.1], 0.1, 1.0, (0.9, 0.999), 1e-8

    def fit(grad_clip):
        model = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
        calls = iter(scales)
        train.fit(model, lambda m, xb, g: next(calls) * m(xb).sum(), x, steps=len(scales), batch_size=1,
                  lr=lr, grad_clip=grad_clip, device=CPU, progress=False)
        return model.weight.detach()[0].double()

    def by_hand(clip):
        w, m, v = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), 0.0, 0.0
        for t, s in enumerate(scales, start=1):
            g = s * x[0].double()
            if clip:
                g = g * min(1.0, c / g.norm().item())
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            w = w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        return w

    clipped, unclipped = fit(grad_clip=c), fit(grad_clip=None)
    assert torch.allclose(clipped, by_hand(clip=True), atol=1e-6)
    assert torch.allclose(unclipped, by_hand(clip=False), atol=1e-6)
    assert not torch.allclose(clipped, unclipped, atol=1e-3)


def test_ema_is_the_closed_form_exponential_average_of_the_weights():
    # ema_n = d^n theta_0 + (1 - d) sum_{k=1..n} d^(n-k) theta_k
    d, n, thetas = 0.8, 6, []
    model = nn.Linear(2, 1)
    x, y = toy_data(16)

    def loss_fn(model, batch, generator):
        thetas.append(torch.cat([p.detach().flatten() for p in model.parameters()]).double())
        return (model(batch[0][:, :2]) - batch[1]).pow(2).mean()

    result = train.fit(model, loss_fn, (x, y), steps=n, batch_size=4, lr=0.05, ema_decay=d,
                       device=CPU, progress=False)
    thetas.append(torch.cat([p.detach().flatten() for p in model.parameters()]).double())
    expected = d**n * thetas[0] + (1 - d) * sum(d ** (n - k) * thetas[k] for k in range(1, n + 1))
    ema = torch.cat([p.flatten() for p in result.ema.parameters()]).double()
    assert torch.allclose(ema, expected, atol=1e-6)
    assert not result.ema.training and not any(p.requires_grad for p in result.ema.parameters())


def test_batches_are_distinct_examples_with_their_tensors_kept_paired():
    x = torch.arange(20.0).reshape(20, 1)
    y = 3 * x
    seen = []

    def loss_fn(model, batch, generator):
        bx, by = batch
        assert bx.shape == (5, 1) and torch.equal(by, 3 * bx)
        assert len(set(bx.flatten().tolist())) == 5
        seen.extend(bx.flatten().tolist())
        return model(bx).pow(2).mean()

    train.fit(nn.Linear(1, 1), loss_fn, (x, y), steps=30, batch_size=5, device=CPU, progress=False)
    assert set(seen) == set(range(20))  # 150 draws reach every example


def test_result_reports_steps_time_and_throughput():
    _, result = run(5)
    assert result.step == 5 and len(result.losses) == 5 and all(math.isfinite(v) for v in result.losses)
    assert result.seconds > 0 and result.images_per_second == pytest.approx(5 * 8 / result.seconds, rel=0.5)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"steps": 0}, ValueError, "steps must be at least 1"),
    ({"steps": 2.5}, TypeError, "steps must be an int"),
    ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
    ({"batch_size": 33}, ValueError, r"batch_size must be at most the number of examples \(32\)"),
    ({"data": (torch.ones(32, 3), torch.ones(31, 1))}, ValueError, r"share their first dimension.*\[32, 31\]"),
    ({"data": [torch.ones(32, 3)]}, TypeError, "data must be a Tensor or a non-empty tuple"),
    ({"checkpoint_every": 5}, ValueError, "checkpoint_every needs a checkpoint"),
    ({"resume": True}, ValueError, "resume=True needs a checkpoint"),
    ({"ema_decay": 1.0}, ValueError, "ema_decay"),
    ({"lr": 0.0}, ValueError, "lr must be positive"),
    ({"grad_clip": -1.0}, ValueError, "grad_clip"),
    ({"loss_fn": lambda m, b, g: m(b[0]) - b[1]}, ValueError, r"scalar tensor, got \(8, 1\)"),
    ({"loss_fn": lambda m, b, g: 1.0}, ValueError, "scalar tensor, got float"),
])
def test_bad_input_is_named(kwargs, error, message):
    args = {"model": nn.Linear(3, 1), "loss_fn": noisy_mse, "data": toy_data(), "steps": 2, "batch_size": 8,
            "device": CPU, "progress": False, **kwargs}
    with pytest.raises(error, match=message):
        train.fit(args.pop("model"), args.pop("loss_fn"), args.pop("data"), **args)


DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from torch import nn
from minildm import checkpoint, train

def mse(model, batch, generator):
    x, y = batch
    return (model(x) - y).pow(2).mean()

def data():
    x = torch.linspace(-1, 1, 48).reshape(16, 3)
    return x, x.sum(1, keepdim=True)

def worker(rank, out):
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    r = train.fit(model, mse, data(), steps=5, batch_size=4, device="cpu", progress=False,
                  checkpoint=os.path.join(out, "ddp.safetensors"))
    checkpoint.save(os.path.join(out, f"rank{rank}.safetensors"), model.state_dict(), {"losses": r.losses})
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.start_processes(worker, args=(sys.argv[1],), nprocs=2, start_method="fork")  # fork: no re-import
"""


@pytest.mark.skipif(sys.platform != "linux" or not torch.distributed.is_available(),
                    reason="uses fork and gloo")
def test_ddp_on_two_cpu_ranks_equals_one_process_with_the_combined_batch(tmp_path):
    # each rank trains on its slice of the same random indices: 2 ranks x 4 == 1 process x 8
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    subprocess.run([sys.executable, str(script), str(tmp_path), str(port)], check=True, timeout=120)
    ranks = [checkpoint.load(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.linspace(-1, 1, 48).reshape(16, 3)
    single = train.fit(model, lambda m, b, g: (m(b[0]) - b[1]).pow(2).mean(), (x, x.sum(1, keepdim=True)),
                       steps=5, batch_size=8, device=CPU, progress=False)
    saved, _ = checkpoint.load(tmp_path / "ddp.safetensors")
    for state, meta in ranks:
        assert meta["losses"] == pytest.approx(single.losses, rel=1e-5)
        for k, v in model.state_dict().items():
            assert torch.allclose(state[k], v, atol=1e-6)
            assert torch.equal(state[k], ranks[0][0][k])  # ranks in sync
            assert torch.equal(saved["model." + k], ranks[0][0][k])
