"""minildm.checks: a correct answer passes with one line; each kind of wrong answer is told what is wrong."""

import numpy as np
import pytest
import torch

from minildm import checks
from minildm.checks import CheckFailed, Mistake, check_value, compare
from minildm.checks import lesson00

T = 50


def reference_q_sample(x0, t, noise, alpha_bar):
    # x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise
    a = alpha_bar[t].view(-1, *[1] * (x0.dim() - 1))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def variance_not_std(x0, t, noise, alpha_bar):
    a = alpha_bar[t].view(-1, *[1] * (x0.dim() - 1))
    return a * x0 + (1 - a) * noise


def random_case(g):
    b = int(torch.randint(1, 5, (), generator=g))
    x0 = torch.randn(b, 3, 4, 5, generator=g)
    return {"x0": x0, "t": torch.randint(0, T, (b,), generator=g), "noise": torch.randn(x0.shape, generator=g),
            "alpha_bar": torch.cumprod(1 - torch.linspace(1e-4, 0.2, T), 0)}


def check_q_sample(learner, **kwargs):
    compare(learner, reference_q_sample, random_case, name="q_sample", **kwargs)


def failure(learner, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check_q_sample(learner, **kwargs)
    return str(info.value)


def test_correct_function_passes_with_one_line(capsys):
    def q_sample(x0, t, noise, alpha_bar):
        ab = alpha_bar.gather(0, t)[:, None, None, None]
        return torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * noise

    assert check_q_sample(q_sample) is None
    assert capsys.readouterr().out == "✓ q_sample matches minildm on 8 random inputs\n"


def test_check_failed_is_an_assertion_error_so_pytest_and_nbval_report_it():
    assert issubclass(CheckFailed, AssertionError)


def test_wrong_shape_names_expected_and_got_shapes():
    cases = [{"x0": torch.ones(2, 3, 4, 5), "t": torch.tensor([0, 9]), "noise": torch.zeros(2, 3, 4, 5),
              "alpha_bar": torch.linspace(0.99, 0.01, 10)}]
    with pytest.raises(CheckFailed) as info:
        compare(lambda x0, t, noise, alpha_bar: reference_q_sample(x0, t, noise, alpha_bar).mean(1),
                reference_q_sample, cases, name="q_sample")
    assert "expected shape (2, 3, 4, 5), got (2, 4, 5)" in str(info.value)


def test_channels_last_output_is_diagnosed_as_a_permutation_with_the_fix():
    message = failure(lambda x0, t, noise, alpha_bar: reference_q_sample(x0, t, noise, alpha_bar).permute(0, 2, 3, 1))
    assert "expected shape" in message
    # the fix undoes (0, 2, 3, 1): NHWC -> NCHW
    assert ".permute(0, 3, 1, 2)" in message


def test_swapped_height_and_width_of_the_same_size_is_found_as_a_permutation():
    square = [{"x0": torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(k)),
               "t": torch.tensor([1, 7]), "noise": torch.zeros(2, 3, 4, 4), "alpha_bar": torch.linspace(0.9, 0.1, 8)}
              for k in range(3)]
    with pytest.raises(CheckFailed) as info:
        compare(lambda x0, t, noise, alpha_bar: reference_q_sample(x0, t, noise, alpha_bar).transpose(-1, -2),
                reference_q_sample, square, name="q_sample")
    assert "axes in another order" in str(info.value) and "permute(0, 1, 3, 2)" in str(info.value)


def test_wrong_dtype_names_both_dtypes():
    message = failure(lambda x0, t, noise, alpha_bar: reference_q_sample(x0, t, noise, alpha_bar).double())
    assert "expected dtype torch.float32, got torch.float64" in message


def test_missing_return_is_pointed_out():
    assert "got None" in failure(lambda x0, t, noise, alpha_bar: None)


def test_flipped_sign_is_diagnosed_without_being_listed():
    message = failure(lambda x0, t, noise, alpha_bar: -reference_q_sample(x0, t, noise, alpha_bar))
    assert "opposite sign" in message


def test_constant_factor_is_diagnosed_with_its_value():
    message = failure(lambda x0, t, noise, alpha_bar: 2.5 * reference_q_sample(x0, t, noise, alpha_bar))
    assert "2.5 × the expected" in message


def test_listed_mistake_is_recognised_and_its_hint_shown():
    mistake = Mistake("variance instead of std", variance_not_std, "take the square roots of alpha_bar and 1 - alpha_bar")
    message = failure(variance_not_std, mistakes=[mistake])
    assert "variance instead of std" in message and "take the square roots" in message


def test_a_mistake_matched_on_only_some_inputs_is_not_blamed():
    mistake = Mistake("variance instead of std", variance_not_std, "take the square roots")

    def half_wrong(x0, t, noise, alpha_bar):
        wrong = variance_not_std(x0, t, noise, alpha_bar)
        return wrong if x0.shape[0] % 2 else wrong + 1

    message = failure(half_wrong, mistakes=[mistake])
    assert "square roots" not in message and "largest difference" in message


def test_largest_difference_reports_its_position_and_how_many_values_differ():
    def one_value_off(x0, t, noise, alpha_bar):
        out = reference_q_sample(x0, t, noise, alpha_bar)
        out[0, 2, 1, 3] += 0.5
        return out

    cases = [random_case(torch.Generator().manual_seed(k)) | {"x0": torch.randn(2, 3, 4, 5), "t": torch.tensor([3, 4]),
                                                               "noise": torch.randn(2, 3, 4, 5)} for k in range(2)]
    with pytest.raises(CheckFailed) as info:
        compare(one_value_off, reference_q_sample, cases, name="q_sample")
    message = str(info.value)
    assert "largest difference at output[0, 2, 1, 3]" in message
    assert "; 1 of 120 values differ" in message  # 2 * 3 * 4 * 5 values, one of them wrong
    assert "on 2 of 2 inputs" in message


def test_nan_output_is_called_out():
    message = failure(lambda x0, t, noise, alpha_bar: reference_q_sample(x0, t, noise, alpha_bar) / 0 * 0)
    assert "NaN" in message


def test_other_exceptions_become_check_failed_naming_the_input_and_error():
    def raises(x0, t, noise, alpha_bar):
        raise ValueError("boom")

    with pytest.raises(CheckFailed) as info:
        check_q_sample(raises)
    message = str(info.value)
    assert "raised ValueError: boom" in message and "on input 1 of 8" in message and "x0=Tensor(" in message
    assert isinstance(info.value.__cause__, ValueError)


def test_not_implemented_error_propagates_unchanged():
    stub_error = NotImplementedError()

    def stub(x0, t, noise, alpha_bar):
        raise stub_error

    with pytest.raises(NotImplementedError) as info:
        check_q_sample(stub)
    assert info.value is stub_error


def test_wrong_parameter_names_are_reported_before_running():
    message = failure(lambda x, t, eps, alpha_bar: x)
    assert "keep the parameter names" in message.lower()


def test_learner_mutating_its_inputs_does_not_corrupt_the_reference_or_the_caller():
    cases = [random_case(torch.Generator().manual_seed(k)) for k in range(3)]
    originals = [{k: v.clone() for k, v in case.items()} for case in cases]

    def in_place(x0, t, noise, alpha_bar):
        alpha_bar.sqrt_()  # alpha_bar now holds sqrt(alpha_bar)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        x0.mul_(a)
        return x0 + (1 - a**2).sqrt() * noise

    compare(in_place, reference_q_sample, cases, name="q_sample")
    for case, original in zip(cases, originals):
        for key in case:
            assert torch.equal(case[key], original[key]), key


def test_a_mutating_learner_still_gets_its_mistake_recognised():
    # the mistake function must see fresh inputs, not the ones the learner edited
    def mutating_variance(x0, t, noise, alpha_bar):
        out = variance_not_std(x0, t, noise, alpha_bar)
        x0.zero_()
        noise.zero_()
        return out

    mistake = Mistake("variance instead of std", variance_not_std, "take the square roots")
    assert "take the square roots" in failure(mutating_variance, mistakes=[mistake])


def test_numpy_numbers_and_tuples_are_compared():
    def ref(x):
        return x.mean(), x * 2, float(x.sum())

    cases = [{"x": np.arange(6.0).reshape(2, 3)}]
    compare(lambda x: (x.mean(), 2 * x, float(x.sum())), ref, cases, name="stats")
    for wrong, expected_text in [
        (lambda x: (x.mean(), 2 * x), "expected a tuple of 3 values, got 2"),
        (lambda x: (x.mean(), torch.from_numpy(2 * x), float(x.sum())), "expected a numpy array, got a torch.Tensor"),
        (lambda x: (x.mean(), 2 * x, torch.tensor(x.sum())), "expected a number, got a torch.Tensor"),
        (lambda x: (x.mean(), 2 * x, float(x.sum()) + 1), "output[2]: got 16, expected 15"),
    ]:
        with pytest.raises(CheckFailed) as info:
            compare(wrong, ref, cases, name="stats")
        assert expected_text in str(info.value)


def test_generator_in_the_inputs_is_copied_so_both_runs_draw_the_same_noise():
    def ref(x, generator):
        return x + torch.randn(x.shape, generator=generator)

    compare(lambda x, generator: x + torch.randn(x.shape, generator=generator), ref,
            lambda g: {"x": torch.randn(3, generator=g), "generator": torch.Generator().manual_seed(5)},
            name="noisy")


def test_check_value_accepts_right_value_and_explains_a_wrong_one(capsys):
    expected = torch.tensor([0.5, 0.25])
    check_value(torch.tensor([0.5, 0.25]), expected, name="snr")
    assert capsys.readouterr().out == "✓ snr is correct\n"
    with pytest.raises(CheckFailed) as info:
        check_value(torch.tensor([0.5, 0.3]), expected, name="snr", hint="SNR = abar / (1 - abar)")
    assert "snr[1]: got 0.3, expected 0.25" in str(info.value) and "Hint: SNR" in str(info.value)
    with pytest.raises(CheckFailed, match="expected a number, got a string"):
        check_value("0.5", 0.5, name="answer")


def test_check_value_of_a_placeholder_raises_not_implemented():
    with pytest.raises(NotImplementedError, match="replace it with your answer"):
        check_value(..., 0.5, name="answer")


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="at least one input"):
        compare(abs, abs, [], name="abs")
    with pytest.raises(TypeError, match="cases must be"):
        compare(abs, abs, 3, name="abs")
    with pytest.raises(TypeError, match="pass your function itself"):
        compare(3.0, abs, [{"x": 1}], name="abs")
    with pytest.raises(TypeError, match="fn must be callable"):
        Mistake("nothing", None, "hint")


# ---------------------------------------------------------------------------- lesson 00

def test_lesson00_checks_are_reexported_by_the_package():
    assert checks.to_unit_range is lesson00.to_unit_range
    assert {"to_unit_range", "to_uint8", "caption_for", "compare", "CheckFailed"} <= set(dir(checks))


def test_to_unit_range_accepts_a_numpy_reference_solution(capsys):
    def to_unit_range(images):
        # written with numpy, independently of the check's torch reference
        return torch.from_numpy((np.transpose(images, (0, 3, 1, 2)) * (2 / 255) - 1).astype(np.float32))

    checks.to_unit_range(to_unit_range)
    assert capsys.readouterr().out == "✓ to_unit_range matches minildm on 8 random inputs\n"


@pytest.mark.parametrize("wrong, hint", [
    (lambda images: torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, "[-1, 1]"),
    (lambda images: torch.from_numpy(images).float() / 127.5 - 1, ".permute(0, 3, 1, 2)"),
    (lambda images: torch.from_numpy(images).float().reshape(
        images.shape[0], 3, *images.shape[1:3]) / 127.5 - 1, "use .permute(0, 3, 1, 2)"),
    (lambda images: torch.from_numpy(images).permute(0, 3, 1, 2) * 2 / 255.0 - 1, "wraps around"),
    (lambda images: torch.from_numpy(images / 127.5 - 1).permute(0, 3, 1, 2), "torch.float64"),
])
def test_to_unit_range_rejects_the_obvious_wrong_answers_with_their_hint(wrong, hint):
    with pytest.raises(CheckFailed) as info:
        checks.to_unit_range(wrong)
    assert hint in str(info.value)


def test_to_uint8_accepts_a_numpy_reference_solution():
    def to_uint8(x):
        pixels = np.rint((np.clip(x.numpy(), -1, 1) + 1) * 255 / 2).astype(np.uint8)
        return torch.from_numpy(pixels.transpose(0, 2, 3, 1).copy())

    checks.to_uint8(to_uint8)


@pytest.mark.parametrize("wrong, hint", [
    (lambda x: ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1), "Clamp to [-1, 1]"),
    (lambda x: ((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1), ".round() first"),
    (lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), ".permute(0, 2, 3, 1)"),
])
def test_to_uint8_rejects_the_obvious_wrong_answers_with_their_hint(wrong, hint):
    with pytest.raises(CheckFailed) as info:
        checks.to_uint8(wrong)
    assert hint in str(info.value)


def test_caption_grammar_is_the_one_in_the_design():
    # DESIGN.md: "a {size} {colour} {shape} in the {position} on {background}"
    def caption_for(shape, colour, size, position, background):
        return " ".join(["a", size, colour, shape, "in", "the", position, "on", background])

    checks.caption_for(caption_for)
    assert caption_for("circle", "red", "small", "top left", "white") == "a small red circle in the top left on white"


def test_caption_for_rejects_colour_before_size_and_a_missing_article():
    with pytest.raises(CheckFailed, match="size first"):
        checks.caption_for(lambda shape, colour, size, position, background:
                           f"a {colour} {size} {shape} in the {position} on {background}")
    with pytest.raises(CheckFailed, match="'in the top left'"):
        checks.caption_for(lambda shape, colour, size, position, background:
                           f"a {size} {colour} {shape} in {position} on {background}")


def test_a_dict_answer_is_compared_key_by_key_whatever_its_key_order(capsys):
    def reference(x):
        return {"mean": x.mean(), "max": x.max()}

    def learner(x):
        return {"max": x.max(), "mean": x.mean()}  # the same values, the keys in another order

    cases = [{"x": torch.arange(6.0)}]
    assert compare(learner, reference, cases, name="stats") is None
    with pytest.raises(CheckFailed, match="max"):
        compare(lambda x: {"max": x.min(), "mean": x.mean()}, reference, cases, name="stats")
