"""What a direct call ``attack(model, inputs, labels, eps=...)`` accepts, checked before the
attack runs so that a caller's mistake is reported as the caller's (the harness calls
:func:`advarena.threat.run_checked` itself, with inputs it built, and skips these checks).

* ``model``: a :class:`~advarena.models.Classifier` (bounds and transform with it), any other
  ``nn.Module`` (its ``bounds`` attribute if it has one, else [0, 1]; it is wrapped in a
  ``Classifier``), or a list of them (an ensemble). Anything else is a ``TypeError`` saying how
  to wrap it.
* ``inputs``: a float tensor or numpy array (converted, on the model's device, in its dtype).
  Integer images (``uint8``) are refused: scale them into the model's box first. Inputs outside
  the model's box are the caller's ``ValueError`` (not a threat-model violation of the attack).
* ``labels``: integer class indices (tensor, numpy or list), or one-hot / probability rows,
  which are converted by argmax.
* ``eps``: a budget larger than the box can hold warns (``eps=8`` on [0, 1] data is the
  8 vs 8/255 slip).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from .models import Classifier, bounds_of
from .threat import ABS_TOL

WRAP_HINT = ("wrap the network: advarena.models.Classifier(net, bounds=(0.0, 1.0)), with the "
             "box its inputs live in")


def _as_model(m: Any) -> nn.Module:
    if isinstance(m, Classifier):
        return m
    if isinstance(m, nn.Module):
        return m if hasattr(m, "bounds") else Classifier(m)
    raise TypeError(f"attacks take a torch.nn.Module returning logits, not "
                    f"{type(m).__name__}; {WRAP_HINT}")


def check_model(model: Any) -> Any:
    """The model (or ensemble) with every member an ``nn.Module`` carrying ``bounds``."""
    if isinstance(model, (list, tuple, nn.ModuleList)):
        members = [_as_model(m) for m in model]
        if not members:
            raise ValueError("an ensemble needs at least one model")
        return members
    return _as_model(model)


def _device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    members = model if isinstance(model, list) else [model]
    for m in members:
        for p in m.parameters():
            if p.is_floating_point():
                return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def check_inputs(model: Any, inputs: Any) -> torch.Tensor:
    device, dtype = _device_dtype(model)
    if not isinstance(inputs, torch.Tensor):
        if type(inputs).__module__.split(".")[0] != "numpy":
            raise TypeError(f"inputs must be a torch.Tensor or a numpy array, not "
                            f"{type(inputs).__name__}")
        inputs = torch.from_numpy(inputs)
    if not inputs.is_floating_point():
        lo, hi = bounds_of(model)
        raise TypeError(f"inputs have dtype {inputs.dtype}: integer images must be scaled into "
                        f"the model's box [{lo:g}, {hi:g}] first, e.g. x.float() / 255")
    inputs = inputs.to(device=device, dtype=dtype if inputs.dtype != dtype else inputs.dtype)
    lo, hi = bounds_of(model)
    if inputs.numel():
        low, high = float(inputs.min()), float(inputs.max())
        if low < lo - ABS_TOL or high > hi + ABS_TOL or math.isnan(low + high):
            raise ValueError(f"inputs lie outside the model's input box [{lo:g}, {hi:g}] "
                             f"(min {low:.4g}, max {high:.4g}): scale them into the box, or "
                             f"give the model its real box: {WRAP_HINT}")
    return inputs


def check_labels(labels: Any, inputs: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"labels must be class indices (a tensor, numpy array or list), "
                            f"not {type(labels).__name__}") from None
    labels = labels.to(inputs.device)
    if labels.dim() == 2 and labels.shape[0] == inputs.shape[0]:
        if not labels.is_floating_point() and not labels.dtype == torch.bool:
            labels = labels.float()
        rows = labels.float().sum(1)
        if bool((labels.float() < 0).any()) or not bool(torch.allclose(
                rows, torch.ones_like(rows), atol=1e-3)):
            raise ValueError(f"labels of shape {tuple(labels.shape)} are neither class indices "
                             f"nor one-hot rows; pass one class index per input")
        labels = labels.float().argmax(1)  # one-hot (or soft) rows: their classes
    if labels.dim() != 1:  # (a count mismatch is run_checked's ParameterError)
        raise ValueError(f"{inputs.shape[0]} inputs need {inputs.shape[0]} labels (class "
                         f"indices), got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        if not bool((labels == labels.round()).all()):
            raise ValueError("labels are fractional; pass integer class indices")
    return labels.long()


def check_eps(attack: Any, model: Any, inputs: torch.Tensor, eps: float | None) -> None:
    tm = attack.threat_model
    if tm.budget != "bounded":
        return
    eps = attack.default_eps() if eps is None else eps
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        return  # run_checked explains
    lo, hi = bounds_of(model)
    span = hi - lo
    d = math.prod(inputs.shape[1:]) if inputs.dim() > 1 else 1
    largest = {"linf": span, "l2": span * math.sqrt(d)}.get(tm.norm)
    if largest is not None and eps > largest:
        warnings.warn(f"{attack.name}: eps={eps:g} exceeds what the {tm.norm} ball can hold in "
                      f"the box [{lo:g}, {hi:g}] ({largest:.4g}); every input is reachable. "
                      f"On [0, 1] images eps is a fraction: 8/255, not 8", stacklevel=3)


def prepare_call(attack: Any, model: Any, inputs: Any, labels: Any,
                 eps: float | None) -> tuple[Any, torch.Tensor, torch.Tensor, bool]:
    """(model, inputs, labels, inputs were numpy) as the attack should get them."""
    was_numpy = not isinstance(inputs, torch.Tensor) and \
        type(inputs).__module__.split(".")[0] == "numpy"
    model = check_model(model)
    x = check_inputs(model, inputs)
    y = check_labels(labels, x)
    check_eps(attack, model, x, eps)
    return model, x, y, was_numpy
