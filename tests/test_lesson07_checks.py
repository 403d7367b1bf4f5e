"""The lesson 07 checks accept right answers however they are written, and pass NotImplementedError through.

tests/test_lesson_checks.py already submits every listed Mistake and asserts that it is named
as itself; here right answers written in other ways than the reference (a loop, a mask, the
guidance-scale form, in-place edits of a copy) must pass, and a wrong one the Mistakes do not
list must still fail.
"""

import math

import pytest
import torch

from minildm import samplers
from minildm.checks import CheckFailed
from minildm.checks import lesson07 as L7


def test_drop_labels_accepts_a_masked_copy():
    def drop_labels(y, u, p, null_class):
        out = y.clone()
        out[u < p] = null_class
        return out
    L7.drop_labels(drop_labels)


def test_guided_eps_accepts_the_guidance_scale_form_and_refuses_a_halved_weight():
    L7.guided_eps(lambda eps_u, eps_c, w: samplers.cfg(eps_u, eps_c, 1 + w))
    with pytest.raises(CheckFailed):
        L7.guided_eps(lambda eps_u, eps_c, w: (1 + w / 2) * eps_c - w / 2 * eps_u)


def test_diversity_accepts_a_loop_over_pairs_and_asks_for_a_number():
    def diversity(features):
        n = len(features)
        pairs = [(features[i] - features[j]).norm().item() for i in range(n) for j in range(i + 1, n)]
        return sum(pairs) / len(pairs)
    L7.diversity(diversity)
    with pytest.raises(CheckFailed, match=r"expected a number, got a torch.Tensor \(use .item\(\)"):
        L7.diversity(lambda features: torch.pdist(features).mean())


def test_classifier_guided_eps_accepts_the_score_written_out():
    def classifier_guided_eps(eps, grad_log_prob, alpha_bar_t, scale):
        sigma = math.sqrt(1 - alpha_bar_t)
        score = -eps / sigma + scale * grad_log_prob  # the guided score
        return -sigma * score
    L7.classifier_guided_eps(classifier_guided_eps)


@pytest.mark.parametrize("check", [L7.drop_labels, L7.guided_eps, L7.diversity, L7.classifier_guided_eps])
def test_an_exercise_not_yet_done_raises_not_implemented_error(check):
    def not_done(*args, **kwargs):
        raise NotImplementedError()
    with pytest.raises(NotImplementedError):
        check(not_done)
