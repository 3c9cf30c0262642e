"""What enters and leaves a defense is checked: a finite update in; matching, finite tensors out, else the defense
is named."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from ggl.defenses import Defense, make_defense
from ggl.defenses.base import MAX_SCALE
from ggl.fl import SharedUpdate

CLEAN = SharedUpdate((torch.ones(2, 3), torch.zeros(4)), 1)


def returning(output: Callable[[SharedUpdate], Any]) -> Defense:
    """A custom defense whose ``apply`` returns ``output(update)``."""

    class Broken(Defense):
        name = "broken"

        def apply(self, update: SharedUpdate, **_: Any) -> Any:
            return output(update)

    return Broken()


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (lambda u: list(u.gradients[:1]), "returned 1 gradient tensors, expected 2"),
        (lambda u: [*u.gradients, torch.ones(1)], "returned 3 gradient tensors, expected 2"),
        (lambda u: [g.flatten() for g in u.gradients], r"gradients\[0\] with shape \(6,\), expected \(2, 3\)"),
        (
            lambda u: [g.double() for g in u.gradients],
            r"gradients\[0\] with dtype torch.float64, expected torch.float32",
        ),
        (lambda u: [g.half() for g in u.gradients], "dtype torch.float16"),
        (lambda u: None, "returned NoneType, expected a list of tensors"),
        (lambda u: [g.tolist() for g in u.gradients], "returned list, expected a list of tensors"),
        (lambda u: [g * float("nan") for g in u.gradients], r"non-finite values in gradients\[0\] \(NaN\)"),
        (lambda u: [g + float("inf") for g in u.gradients], r"gradients\[0\] \(inf\), gradients\[1\] \(inf\)"),
        (lambda u: [u.gradients[0], torch.tensor([0.0, float("nan"), 0.0, 0.0])], r"gradients\[1\] \(NaN\)"),
        (lambda u: [g * 1e300 for g in u.gradients], r"gradients\[0\] \(inf\)"),
    ],
)
def test_malformed_output_names_the_defense(output: Callable[[SharedUpdate], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        returning(output)(CLEAN)
    assert str(caught.value).startswith("defense 'broken' returned")


@pytest.mark.parametrize(
    ("gradients", "where"),
    [
        ((torch.full((2, 3), float("nan")), torch.zeros(4)), r"gradients\[0\] \(NaN\)"),
        ((torch.full((2, 3), float("inf")), torch.full((4,), -float("inf"))), r"gradients\[1\] \(inf\)"),
        ((torch.ones(2, 3), torch.tensor([0.0, 0.0, float("nan"), 0.0])), r"gradients\[1\] \(NaN\)"),
    ],
    ids=["all-nan", "all-inf", "one-nan"],
)
@pytest.mark.parametrize("name", ["none", "gaussian", "clipping", "sparsification", "quantization"])
def test_non_finite_clean_update_is_refused(name: str, gradients: tuple[torch.Tensor, ...], where: str) -> None:
    with pytest.raises(ValueError, match=f"defense '{name}' received an update with non-finite values in .*{where}"):
        make_defense(name)(SharedUpdate(gradients, 1))


def test_a_subclass_cannot_replace_the_checked_call() -> None:
    with pytest.raises(TypeError, match="overrides Defense.__call__; implement apply"):

        class Unchecked(Defense):
            name = "unchecked"

            def __call__(self, update: SharedUpdate, **_: Any) -> SharedUpdate:
                return update


@pytest.mark.parametrize(("name", "parameter"), [("gaussian", "sigma"), ("laplacian", "scale")])
def test_largest_allowed_noise_stays_finite(name: str, parameter: str) -> None:
    defended = make_defense(name, **{parameter: MAX_SCALE})(SharedUpdate((torch.zeros(10_000),), 1))
    assert bool(torch.isfinite(defended.gradients[0]).all())
    with pytest.raises(ValueError, match=f"{parameter} must be in .* \\(a larger scale .* overflows float32"):
        make_defense(name, **{parameter: MAX_SCALE * 10})
