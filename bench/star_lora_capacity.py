"""How large must a LoRA adapter on shapes-ldm be to draw the star? Adapters side by side.

Every variant starts from the shipped shapes-ldm (and shapes-clip), trains only its LoRA
tensors on the shapes-star-lora recipe's data (1000 stars + 1000 old shapes, 10% caption
dropout, batch 64, EMA 0.995) for the same ``--steps``, and is judged like the shipped adapter:
one DDIM-50 sample at guidance 3 per prompt, on the 100 star prompts (the judge's star rate
and everything-right rate) and the 300 old one-object prompts (everything right). Variants:

- recipe:       the shipped recipe's targets (attn2 K, V and the 8x8-level convolutions), r = 3;
- recipe+text:  the same, plus rank-2 LoRA on the text encoder's attention projections;
- transformers: every projection of the 5 spatial transformers (proj_in / out, attn2, ff), r = 1,
                plus the rank-2 text adapter;
- low-res-r1,   every convolution and linear layer below the 8x8 level (78 layers: 4x4 and 2x2
  low-res-r8:   resnets, up / downsamplers, transformers), r = 1 and r = 8.

Printed per variant: trainable numbers as a fraction of the U-Net's, final loss, star rate,
everything-right on star and old prompts, and seconds. Then the largest adapter's learned
Delta W = (alpha / r) B A of every layer is cut to its top k singular directions (k = 4, 2, 1)
and judged again: how much rank the star actually uses.

    python bench/star_lora_capacity.py [--steps 1000] [--variants recipe,recipe+text,...]

The full run takes about 20 minutes on one CPU core.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from minildm import judge, ldm, lora, recipes, text, train

TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
TRANSFORMER_TARGETS = ["proj_in", "proj_out", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                       "ff.net.0.proj", "ff.net.2"]
# name -> (U-Net targets or None for "every layer below 8x8", U-Net rank, text rank, learning rate);
# the low-res adapters diverge at the recipe's lr 1e-2 with r = 8, so both use 3e-3
VARIANTS = {
    "recipe": (recipes.STAR_LORA_TARGETS, 3, 0, 1e-2),
    "recipe+text": (recipes.STAR_LORA_TARGETS, 3, 2, 1e-2),
    "transformers": (TRANSFORMER_TARGETS, 1, 2, 1e-2),
    "low-res-r1": (None, 1, 0, 3e-3),
    "low-res-r8": (None, 8, 0, 3e-3),
}


def low_resolution_layers(net: nn.Module) -> list[str]:
    """Every Conv2d / Linear below the 8x8 level, time embedding projections excepted."""
    return [name for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
            and not name.startswith(("down.0", "up.0", "conv_", "time_mlp", "downsample.0"))
            and "emb_proj" not in name]


def build(targets, r: int, text_r: int) -> nn.ModuleDict:
    """shapes-ldm's U-Net and text encoder, LoRA injected (alpha = r: scale 1), everything else frozen."""
    torch.manual_seed(0)  # A's initial weights
    parts = recipes.shapes_ldm_parts("cpu")
    net, clip = parts[0], parts[2]
    lora.inject(net, targets=targets or low_resolution_layers(net), r=r, alpha=float(r))
    if text_r:
        lora.inject(clip.text_model, targets=TEXT_TARGETS, r=text_r, alpha=float(text_r))
    return nn.ModuleDict({"unet": net, "text": clip})


def fit(pair: nn.ModuleDict, steps: int, lr: float) -> train.TrainResult:
    """The recipe's loss, with the text features recomputed each step (the text encoder may be adapted)."""
    _, vae, clip, schedule = recipes.shapes_ldm_parts("cpu", unet_model=pair["unet"])
    images, captions = recipes.star_lora_data(*[recipes.STAR_LORA_SIZES["full"][k] for k in ("n_star", "n_prior")])
    z0 = torch.cat([ldm.encode(vae, x) for x in images.split(500)])  # (N, 4, 8, 8)
    ids, mask = text.encode(captions, clip.max_length)  # (N, L) each
    empty_ids, empty_mask = text.encode([ldm.EMPTY_PROMPT], clip.max_length)  # (1, L) each

    def loss_fn(model, batch, generator):
        z, batch_ids, batch_mask = batch
        context = model["text"].text_features(batch_ids, batch_mask)  # (B, L, 64)
        empty = model["text"].text_features(empty_ids, empty_mask)  # (1, L, 64)
        return ldm.loss(model["unet"], z, context, empty, schedule,
                        caption_dropout=recipes.SHAPES_LDM_CONFIG["caption_dropout"], generator=generator)

    return train.fit(pair, loss_fn, (z0, ids, mask), steps=steps, device="cpu", progress=False,
                     **(recipes.STAR_LORA_TRAIN | {"lr": lr}))


def judged(pair: nn.ModuleDict) -> tuple[judge.Score, judge.Score]:
    """(star prompts, old prompts) scored as the shipped adapter's metrics are."""
    _, vae, _, schedule = recipes.shapes_ldm_parts("cpu", unet_model=pair["unet"])
    parts = (pair["unet"], vae, pair["text"], schedule)
    return (recipes.adherence(pair["unet"], recipes.star_prompts(), steps=50, parts=parts),
            recipes.adherence(pair["unet"], recipes.one_object_prompts(), steps=50, parts=parts))


@torch.no_grad()
def truncate(model: nn.Module, k: int) -> None:
    """Keep the top k singular directions of every LoRA layer's B A, in place (A, B keep their shapes)."""
    for module in model.modules():
        if isinstance(module, lora.LoRALinear):  # LoRAConv2d too (a subclass)
            A, B = module.lora_A.weight, module.lora_B.weight  # (r, in[, kh, kw]), (out, r[, 1, 1])
            U, S, Vh = torch.linalg.svd(B.flatten(1) @ A.flatten(1), full_matrices=False)
            S[k:] = 0
            r = A.shape[0]
            A.copy_((S[:r, None] * Vh[:r]).reshape(A.shape))
            B.copy_(U[:, :r].reshape(B.shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from: "
                        + ", ".join(VARIANTS))
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; expected names from {list(VARIANTS)}")
    unet_size = sum(p.numel() for p in recipes.shapes_ldm_parts("cpu")[0].parameters())
    print(f"{args.steps} steps each; star / old: the judge's rates on 100 star and 300 old prompts")
    print(f"{'variant':14}{'numbers':>9}{'% U-Net':>9}{'loss':>8}{'star':>7}{'star all':>10}{'old all':>9}{'s':>6}")
    largest = None
    for name in names:
        targets, r, text_r, lr = VARIANTS[name]
        pair = build(targets, r, text_r)
        trainable = sum(p.numel() for p in pair.parameters() if p.requires_grad)
        start = time.perf_counter()
        result = fit(pair, args.steps, lr)
        star, old = judged(result.ema.eval())
        loss = sum(result.losses[-100:]) / len(result.losses[-100:])
        print(f"{name:14}{trainable:>9,}{100 * trainable / unet_size:>8.2f}%{loss:>8.4f}{star.rates['shape']:>7.0%}"
              f"{star.rates['all']:>10.0%}{old.rates['all']:>9.0%}{time.perf_counter() - start:>6.0f}", flush=True)
        if largest is None or trainable > largest[1]:
            largest = (name, trainable, result.ema)
    name, _, ema = largest
    for k in (4, 2, 1):
        truncate(ema["unet"], k)
        star, old = judged(ema)
        print(f"{name}, Delta W cut to rank {k}: star {star.rates['shape']:.0%}, old all {old.rates['all']:.0%}",
              flush=True)


if __name__ == "__main__":
    main()
