"""The harness's threat-model check. Plugins never check themselves: every call of an attack the
harness makes goes through :func:`run_checked`.
"""

from __future__ import annotations

import torch

from .api.attack import Attack
from .errors import ParameterError, ThreatModelViolation
from .models import ModelLike, as_members, as_single, bounds_of

# float32 arithmetic on inputs in [0, 1]: clamping is exact, so violations of more than a few
# ulps are real bugs.
ABS_TOL = 1e-6
REL_TOL = 1e-5


def run_checked(attack: Attack, model: ModelLike, inputs: torch.Tensor, labels: torch.Tensor, *,
                eps: float | None = None, seed: int | None = 0,
                copy: bool = True) -> torch.Tensor:
    """Run ``attack`` and check its output; return the adversarial inputs.

    The attack gets copies of ``inputs`` and ``labels`` (``copy``; the plugin test kit turns
    it off to see whether an attack writes into its inputs), and its output is checked
    against the caller's own ``inputs``, which the attack cannot reach: writing into what it
    was given changes nothing else, and cannot move the centre of the eps-ball. A copy of one
    batch costs less than checking it afterwards, which needs a copy to compare with anyway
    (measured in ``docs/threat-model.md``)."""
    tm = attack.threat_model
    if tm.budget == "bounded":
        eps = attack.default_eps() if eps is None else eps
        if eps is None:
            raise ParameterError(f"{attack.name}: a bounded attack needs eps")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ParameterError(f"{attack.name}: eps must be a number >= 0, got {eps!r}")
        eps = float(eps)
    elif eps is not None:
        raise ParameterError(f"{attack.name}: a minimal attack takes no eps")
    if inputs.shape[0] != labels.shape[0]:
        raise ParameterError(
            f"{attack.name}: {inputs.shape[0]} inputs but {labels.shape[0]} labels")
    members = as_members(model)
    target = members if attack.accepts_ensemble else as_single(model)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=inputs.device)
        gen.manual_seed(seed)
    # Save every submodule's mode (not just the top's: train(t) would reset frozen parts too).
    modes = [(mod, mod.training) for m in members for mod in m.modules()]
    for m in members:
        m.eval()
    try:
        x_in, y_in = ((inputs.detach().clone(), labels.clone()) if copy
                      else (inputs.detach(), labels))
        x_adv = attack.run(target, x_in, y_in, eps, gen)
    finally:
        for mod, t in modes:
            mod.training = t
    check_output(attack, inputs, x_adv, eps, bounds_of(model))
    return x_adv.detach()


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example norm of a batch of perturbations."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return flat.norm(dim=1)
    if norm == "l0":
        return (flat != 0).sum(1).to(flat.dtype)
    raise ValueError(f"unknown norm {norm!r}")


def check_output(attack: Attack, inputs: torch.Tensor, x_adv: object, eps: float | None,
                 bounds: tuple[float, float]) -> None:
    """Raise :class:`ThreatModelViolation` naming the plugin if ``x_adv`` breaks the threat
    model: wrong type or shape, non-finite values, outside the box, outside the eps-ball."""
    who = f"attack '{attack.name}'"
    if attack.distribution:
        who += f" (from {attack.distribution})"
    if not isinstance(x_adv, torch.Tensor):
        raise ThreatModelViolation(f"{who} returned {type(x_adv).__name__}, not a tensor")
    if x_adv.shape != inputs.shape:
        raise ThreatModelViolation(
            f"{who} returned shape {tuple(x_adv.shape)} for inputs of shape {tuple(inputs.shape)}")
    if x_adv.dtype != inputs.dtype:
        raise ThreatModelViolation(f"{who} returned dtype {x_adv.dtype}, expected {inputs.dtype}")
    bad = (~torch.isfinite(x_adv)).reshape(len(x_adv), -1).any(1)
    if bool(bad.any()):
        raise ThreatModelViolation(
            f"{who} returned non-finite values for {int(bad.sum())} of {len(x_adv)} examples")
    lo, hi = bounds
    below = float((lo - x_adv).max()) if x_adv.numel() else 0.0
    above = float((x_adv - hi).max()) if x_adv.numel() else 0.0
    if below > ABS_TOL or above > ABS_TOL:
        raise ThreatModelViolation(
            f"{who} left the input box [{lo}, {hi}] by {max(below, above):.3g}")
    tm = attack.threat_model
    if tm.budget == "bounded" and eps is not None:
        norms = perturbation_norm(x_adv.detach() - inputs.detach(), tm.norm)
        tol = 0.5 if tm.norm == "l0" else ABS_TOL + REL_TOL * eps
        worst = float(norms.max()) if len(norms) else 0.0
        if worst > eps + tol:
            n_out = int((norms > eps + tol).sum())
            raise ThreatModelViolation(
                f"{who} left the {tm.norm} ball of eps={eps:g} on {n_out} of {len(norms)} "
                f"examples (largest norm {worst:.6g})")
