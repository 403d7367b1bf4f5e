"""How an exercise checks itself: run the learner's function beside ours and explain the difference.

A check that only says "wrong" teaches nothing. ``compare`` runs the learner's function and
the reference on the same random inputs (each gets its own copy, so a function that edits
its inputs in place cannot spoil the other run) and, when the answers differ, says *how*:
the wrong type, shape or dtype; an error and the input that caused it; a known mistake
(a swapped sign, alpha instead of alpha_bar, an off-by-one in t: a ``Mistake`` the check
lists with its hint); a generic one found by fitting ``got = a * expected + b`` (sign
flipped, scaled, shifted) or by trying axis permutations (NHWC instead of NCHW); else the
largest difference and where it is. The style follows Neuromatch's self-checking
exercises; the student versions of our notebooks replace each solution by
``raise NotImplementedError()``, which every check lets through unchanged.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["CheckFailed", "Mistake", "compare", "check_value"]

Cases = Sequence[Mapping[str, Any]] | Callable[[torch.Generator], Mapping[str, Any]]


class CheckFailed(AssertionError):
    """An exercise answer that does not match the reference; the message says how."""


@dataclass(frozen=True)
class Mistake:
    """A plausible wrong implementation, with the same signature as the reference.

    When the learner's answer equals ``fn``'s on every input, the check shows ``hint``.
    """

    name: str
    fn: Callable[..., Any]
    hint: str

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Mistake {self.name!r}: fn must be callable, got {type(self.fn).__name__}")


def compare(learner: Callable[..., Any], reference: Callable[..., Any], cases: Cases, *, name: str,
            mistakes: Sequence[Mistake] = (), atol: float = 1e-5, rtol: float = 1e-4,
            hint: str | None = None, n_cases: int = 8, seed: int = 0) -> None:
    """Check ``learner`` against ``reference`` on ``cases``; print one line or raise ``CheckFailed``.

    ``cases`` is a list of keyword-argument dicts, or a function ``generator -> dict`` drawn
    ``n_cases`` times from a generator seeded with ``seed``. ``NotImplementedError`` from the
    learner propagates unchanged (an exercise not yet done).
    """
    __tracebackhide__ = True
    if not callable(learner):
        raise TypeError(f"{name}: pass your function itself (e.g. {name}), got {type(learner).__name__}")
    inputs = _make_cases(cases, n_cases, seed)
    signature_problem = _signature_problem(learner, inputs[0], name)
    if signature_problem:
        raise CheckFailed(signature_problem)

    expected = [reference(**copy.deepcopy(kw)) for kw in inputs]
    got = []
    for i, kw in enumerate(inputs):
        try:
            out = learner(**copy.deepcopy(kw))
        except NotImplementedError:
            raise
        except Exception as err:
            raise CheckFailed(
                f"{name} raised {type(err).__name__}: {err}\n"
                f"  on input {_which(i, len(inputs))}: {_describe_inputs(kw)}"
                + _hint_line(hint)) from err
        problem = _structure_problem(out, expected[i], "output", atol, rtol)
        if problem:
            raise CheckFailed(
                f"{name} returned the wrong kind of result: {problem}\n"
                f"  on input {_which(i, len(inputs))}: {_describe_inputs(kw)}" + _hint_line(hint))
        got.append(out)

    bad = [i for i in range(len(inputs)) if not _close(got[i], expected[i], atol, rtol)]
    if not bad:
        kind = "random inputs" if callable(cases) else ("input" if len(inputs) == 1 else "inputs")
        print(f"✓ {name} matches minildm on {len(inputs)} {kind}")
        return None

    for mistake in mistakes:
        if _matches_mistake(mistake.fn, inputs, got, atol, rtol):
            raise CheckFailed(f"{name} gives the wrong values; it behaves like this mistake: "
                              f"{mistake.name}.\nHint: {mistake.hint}")
    raise CheckFailed(_value_report(name, got, expected, bad, inputs, atol, rtol) + _hint_line(hint))


def check_value(learner_value: Any, expected: Any, *, name: str, atol: float = 1e-5,
                rtol: float = 1e-4, hint: str | None = None) -> None:
    """Check an answer that is a value (number, tensor, array, tuple) rather than a function.

    A value still left as ``...`` (the placeholder before the solution region) raises
    ``NotImplementedError``, like an exercise function that is not written yet.
    """
    __tracebackhide__ = True
    if learner_value is Ellipsis:
        raise NotImplementedError(f"{name} is still `...`: replace it with your answer")
    problem = _structure_problem(learner_value, expected, name, atol, rtol)
    if problem:
        raise CheckFailed(f"{name} has the wrong kind of value: {problem}" + _hint_line(hint))
    if not _close(learner_value, expected, atol, rtol):
        raise CheckFailed(_value_report(name, [learner_value], [expected], [0], None, atol, rtol)
                          + _hint_line(hint))
    print(f"✓ {name} is correct")


# ---------------------------------------------------------------------------- inputs

def _make_cases(cases: Cases, n_cases: int, seed: int) -> list[dict]:
    if callable(cases):
        if isinstance(n_cases, bool) or not isinstance(n_cases, int) or n_cases < 1:
            raise ValueError(f"n_cases must be a positive int, got {n_cases!r}")
        generator = torch.Generator().manual_seed(seed)
        made = [cases(generator) for _ in range(n_cases)]
    elif isinstance(cases, Sequence) and not isinstance(cases, str):
        made = list(cases)
    else:
        raise TypeError(f"cases must be a list of keyword-argument dicts or a function of a "
                        f"torch.Generator, got {type(cases).__name__}")
    if not made:
        raise ValueError("cases must hold at least one input")
    for kw in made:
        if not isinstance(kw, Mapping):
            raise TypeError(f"each case must be a dict of keyword arguments, got {type(kw).__name__}")
    return [dict(kw) for kw in made]


def _signature_problem(learner, kwargs: dict, name: str) -> str | None:
    try:
        signature = inspect.signature(learner)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        wanted = ", ".join(kwargs)
        return (f"{name} must accept the arguments ({wanted}), but yours is {name}{signature} "
                f"({err}).\n  Keep the parameter names the exercise gives.")
    return None


def _which(i: int, n: int) -> str:
    return f"{i + 1} of {n}"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 6:
            return repr(value.detach()).replace("\n", " ")
        return f"Tensor{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, np.ndarray):
        if value.size <= 6:
            return f"array({value.tolist()}, dtype={value.dtype})"
        return f"ndarray{value.shape} {value.dtype}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_describe(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, (numbers.Number, str)) or value is None:
        return repr(value)
    return type(value).__name__


def _describe_inputs(kwargs: dict) -> str:
    return ", ".join(f"{k}={_describe(v)}" for k, v in kwargs.items())


def _hint_line(hint: str | None) -> str:
    return f"\nHint: {hint}" if hint else ""


# ---------------------------------------------------------------------------- structure

def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return "a torch.Tensor"
    if isinstance(value, np.ndarray):
        return "a numpy array"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, numbers.Number):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, Mapping):
        return "a dict"
    return f"a {type(value).__name__}"


def _structure_problem(got: Any, exp: Any, path: str, atol: float, rtol: float) -> str | None:
    """Why ``got`` cannot be compared value by value with ``exp``, or None if it can."""
    if isinstance(exp, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            extra = " — did you forget to `return` it?" if got is None else ""
            if isinstance(got, np.ndarray):
                extra = " (convert with torch.from_numpy / torch.as_tensor)"
            return f"{path}: expected a torch.Tensor, got {_kind(got)}{extra}"
        return _array_problem(got, exp, path, atol, rtol)
    if isinstance(exp, np.ndarray):
        if not isinstance(got, np.ndarray):
            extra = " (convert with .numpy())" if isinstance(got, torch.Tensor) else ""
            return f"{path}: expected a numpy array, got {_kind(got)}{extra}"
        return _array_problem(got, exp, path, atol, rtol)
    if isinstance(exp, numbers.Number) and not isinstance(exp, bool):
        if isinstance(got, bool) or not isinstance(got, numbers.Number):
            extra = " (use .item() to get a Python number)" if isinstance(got, (torch.Tensor, np.ndarray)) else ""
            return f"{path}: expected a number, got {_kind(got)}{extra}"
        return None
    if isinstance(exp, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"{path}: expected {_kind(exp)} values, got {_kind(got)}"
        if len(got) != len(exp):
            return f"{path}: expected {_kind(exp)} values, got {len(got)}"
        for i, (g, e) in enumerate(zip(got, exp)):
            problem = _structure_problem(g, e, f"{path}[{i}]", atol, rtol)
            if problem:
                return problem
        return None
    if isinstance(exp, Mapping):
        if not isinstance(got, Mapping):
            return f"{path}: expected a dict, got {_kind(got)}"
        if set(got) != set(exp):
            return f"{path}: expected the keys {sorted(map(str, exp))}, got {sorted(map(str, got))}"
        for key in exp:
            problem = _structure_problem(got[key], exp[key], f"{path}[{key!r}]", atol, rtol)
            if problem:
                return problem
        return None
    if type(got) is not type(exp):
        return f"{path}: expected {_kind(exp)}, got {_kind(got)}"
    return None


def _array_problem(got, exp, path: str, atol: float, rtol: float) -> str | None:
    if tuple(got.shape) != tuple(exp.shape):
        message = f"{path}: expected shape {tuple(exp.shape)}, got {tuple(got.shape)}"
        perm = _find_permutation(got, exp, atol, rtol)
        if perm is not None:
            undo = tuple(perm.index(d) for d in range(len(perm)))
            message += (f"\n  Your values are right but the axes are in another order: "
                        f"your result.permute{undo} gives the expected one "
                        f"(we use NCHW: batch, channels, height, width)")
        elif got.ndim != exp.ndim:
            message += f" ({exp.ndim} axes expected, {got.ndim} given: a missing or extra axis, or broadcasting?)"
        return message
    if got.dtype != exp.dtype:
        convert = f".to({exp.dtype})" if isinstance(exp, torch.Tensor) else f".astype(np.{exp.dtype})"
        return f"{path}: expected dtype {exp.dtype}, got {got.dtype} (convert with {convert})"
    return None


def _find_permutation(got, exp, atol: float, rtol: float) -> tuple[int, ...] | None:
    """The axis order ``p`` (not the identity) with ``exp.permute(p) == got``, if there is one."""
    if got.ndim != exp.ndim or got.ndim > 6 or got.ndim < 2:
        return None
    g, e = _as_float64(got), _as_float64(exp)
    for perm in itertools.permutations(range(e.ndim)):
        if perm == tuple(range(e.ndim)):
            continue
        candidate = e.permute(perm)
        if candidate.shape == g.shape and bool(torch.isclose(g, candidate, rtol, atol, equal_nan=True).all()):
            return perm
    return None


# ---------------------------------------------------------------------------- values

def _as_float64(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64)
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def _leaves(value: Any, path: str):
    """(path, value) for every tensor, array, number or other value inside ``value``."""
    if isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    elif isinstance(value, Mapping):
        for key in sorted(value, key=repr):  # the same order for the learner's dict and ours
            yield from _leaves(value[key], f"{path}[{key!r}]")
    else:
        yield path, value


def _numeric(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray)) or (
        isinstance(value, numbers.Number) and not isinstance(value, complex))


def _leaf_close(got: Any, exp: Any, atol: float, rtol: float) -> bool:
    if _numeric(exp) and _numeric(got):
        g, e = _as_float64(got), _as_float64(exp)
        return g.shape == e.shape and bool(torch.isclose(g, e, rtol, atol, equal_nan=True).all())
    return bool(got == exp)


def _close(got: Any, exp: Any, atol: float, rtol: float) -> bool:
    pairs = zip(_leaves(got, ""), _leaves(exp, ""))
    return all(_leaf_close(g, e, atol, rtol) for (_, g), (_, e) in pairs)


def _matches_mistake(fn, inputs: list[dict], got: list, atol: float, rtol: float) -> bool:
    for kw, out in zip(inputs, got):
        try:
            wrong = fn(**copy.deepcopy(kw))
        except Exception:
            return False
        if _structure_problem(out, wrong, "", atol, rtol) or not _close(out, wrong, atol, rtol):
            return False
    return True


def _flat(value: Any) -> torch.Tensor:
    parts = [_as_float64(v).reshape(-1) for _, v in _leaves(value, "") if _numeric(v)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def _affine_diagnosis(got: list, expected: list, atol: float, rtol: float) -> str | None:
    """Describe ``got = a * expected + b`` (one a, b for every input) when that fits exactly."""
    g = torch.cat([_flat(x) for x in got])
    e = torch.cat([_flat(x) for x in expected])
    if e.numel() < 2 or not bool(torch.isfinite(g).all() and torch.isfinite(e).all()):
        return None
    e_centred = e - e.mean()
    spread = float((e_centred ** 2).sum())
    if spread <= 1e-12 * max(1.0, float((e ** 2).sum())):
        return None
    # least squares: a = cov(g, e) / var(e),  b = mean(g) - a mean(e)
    a = float(((g - g.mean()) * e_centred).sum()) / spread
    b = float(g.mean()) - a * float(e.mean())
    if not bool(torch.isclose(g, a * e + b, rtol, atol).all()):
        return None
    small = 10 * atol + rtol * float(e.abs().max())
    if abs(b) <= small:
        if abs(a + 1) <= 1e-3:
            return "your values have the opposite sign of the expected ones: a sign is flipped somewhere"
        if abs(a) <= 1e-6:
            return "your values are all zero"
        return f"every value of yours is {a:.4g} × the expected one: a factor is off"
    if abs(a - 1) <= 1e-3:
        return f"every value of yours is the expected one {'+' if b > 0 else '-'} {abs(b):.4g}: a constant shift"
    return f"your values are {a:.4g} × expected {'+' if b > 0 else '-'} {abs(b):.4g} on every input"


def _permutation_diagnosis(got: list, expected: list, bad: list[int], atol: float, rtol: float) -> str | None:
    """A same-shape axis swap (H and W, say) shared by every failing input, described."""
    if not all(isinstance(got[i], (torch.Tensor, np.ndarray)) for i in bad):
        return None
    perm = _find_permutation(got[bad[0]], expected[bad[0]], atol, rtol)
    if perm is None or any(_find_permutation(got[i], expected[i], atol, rtol) != perm for i in bad[1:]):
        return None
    return (f"your values are the expected ones with the axes in another order "
            f"(expected.permute{perm}): check your permute / transpose")


def _value_report(name: str, got: list, expected: list, bad: list[int], inputs: list[dict] | None,
                  atol: float, rtol: float) -> str:
    lines = [f"{name} gives the wrong values" + (f" on {len(bad)} of {len(got)} inputs." if inputs else ".")]
    for diagnosis in (_affine_diagnosis(got, expected, atol, rtol),
                      _permutation_diagnosis(got, expected, bad, atol, rtol)):
        if diagnosis:
            lines.append(f"  {diagnosis}.")
    lines.append(_largest_difference(got, expected, bad, "output" if inputs else name, atol, rtol))
    if inputs:
        worst_input = bad[0]
        lines.append(f"  on input {_which(worst_input, len(inputs))}: {_describe_inputs(inputs[worst_input])}")
    return "\n".join(lines)


def _largest_difference(got: list, expected: list, bad: list[int], root: str, atol: float, rtol: float) -> str:
    """Where the first failing input is furthest from the expected one, and how far."""
    i = bad[0]
    worst = None
    for (path, g), (_, e) in zip(_leaves(got[i], root), _leaves(expected[i], root)):
        if _leaf_close(g, e, atol, rtol):
            continue
        if not (_numeric(g) and _numeric(e)):
            return f"  at {path}: expected {e!r}, got {g!r}"
        gf, ef = _as_float64(g), _as_float64(e)
        diff = (gf - ef).abs().reshape(-1)
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
        where = int(diff.argmax())
        if worst is None or float(diff[where]) > worst[0]:
            worst = (float(diff[where]), path, where, gf, ef)
    _, path, where, g, e = worst
    index = tuple(int(k) for k in np.unravel_index(where, tuple(e.shape))) if e.ndim else ()
    at = f"{path}[{', '.join(map(str, index))}]" if index else path
    g_at, e_at = float(g.reshape(-1)[where]), float(e.reshape(-1)[where])
    line = f"  largest difference at {at}: got {g_at:.6g}, expected {e_at:.6g}"
    if np.isnan(g_at):
        line += " (NaN: a division by zero, or a log or sqrt of a negative number?)"
    n_wrong = int((~torch.isclose(g, e, rtol, atol, equal_nan=True)).sum())
    if e.numel() > 1:
        line += f"; {n_wrong} of {e.numel()} values differ"
    return line
