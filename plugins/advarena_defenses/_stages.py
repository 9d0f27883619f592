"""Helpers shared by the multi-stage defenses (``deepfool-at``, ``rad``, ``aec``, ``iaec``,
``distillation``, ``feature-squeezing``). A private module: the registry skips it.

Every training stage goes through ``session.train`` so the trainer measures it. Work a defense
does once between stages (crafting a fixed set of adversarial examples, the teacher's soft
labels) is measured with ``session.measure``, so its passes and time count in the cost record.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from advarena.api import Attack, Defense, TensorData
from advarena.errors import ParameterError
from advarena.models import Classifier, predict
from advarena.params import param
from advarena.threat import run_checked
from advarena.trainer import require_declared

# Batch size for crafting and prediction outside the training loop.
CRAFT_BATCH = 256


def parse_attack_params(items: Iterable[str], owner: str) -> dict[str, str]:
    """``("steps=20", "lr=0.01")`` -> ``{"steps": "20", "lr": "0.01"}``. Values stay strings;
    the attack's own parameter declarations coerce and validate them."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"{owner}: attack_params entries must look like 'name=value', "
                                 f"got {item!r}")
        out[key.strip()] = value.strip()
    return out


def make_attack(name: str, params: Iterable[str], owner: Defense, **fixed: Any) -> Attack:
    """The registered attack ``name`` with ``fixed`` parameters (only those it declares)
    overridden by the user's ``attack_params`` strings. ``owner`` (the defense building it)
    must name it in ``training_attacks()``, so its code enters the defense's cell key."""
    from advarena.plugins import default_registry

    require_declared(owner, name)
    cls = default_registry().get("attacks", name)
    known = {p.name for p in cls.describe_params()}
    merged = {k: v for k, v in fixed.items() if k in known and v is not None}
    merged.update(parse_attack_params(params, owner.name))
    return default_registry().create("attacks", name, **merged)


def as_classifier(model: nn.Module, bounds: tuple[float, float]) -> nn.Module:
    return model if hasattr(model, "bounds") else Classifier(model, bounds)


def deployed(session, net: nn.Module | None = None) -> Classifier:
    """The classifier as it will be deployed: the network behind the session's input transform
    (if any), in the dataset's box."""
    return Classifier(session.model if net is None else net, session.info.bounds,
                      session.transform)


def craft(session, attack: Attack, model: nn.Module, data: TensorData, *,
          eps: float | None = None, note: str = "crafting") -> torch.Tensor:
    """Adversarial examples of every input of ``data`` against ``model``, through the harness
    (:func:`advarena.threat.run_checked`: box and budget checked), in batches, each batch with a
    seed drawn from the session's CPU generator, measured as one-off work ``note``; the
    attack and the number of examples go to ``session.notes[note]``."""
    target = as_classifier(model, session.info.bounds)
    bounded = attack.threat_model.budget == "bounded"
    if bounded and eps is None:
        eps = attack.default_eps()
    out = []
    # Measured as one-off work: its passes and time count in the defense's cost record.
    with session.measure(note, model=target):
        for i in range(0, len(data), CRAFT_BATCH):
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=session.cpu_generator))
            out.append(run_checked(attack, target, data.x[i:i + CRAFT_BATCH],
                                   data.y[i:i + CRAFT_BATCH], eps=eps if bounded else None,
                                   seed=seed))
    rec = session.notes.setdefault(note, {"attack": attack.name, "examples": 0})
    rec["examples"] += len(data)
    return torch.cat(out) if out else data.x[:0].clone()


def predictions(session, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return predict(model, x, CRAFT_BATCH)
    finally:
        model.train(was)


def subsample(session, index: torch.Tensor, limit: int) -> torch.Tensor:
    """At most ``limit`` entries of ``index`` (0: all), drawn with the session's generator."""
    if limit <= 0 or len(index) <= limit:
        return index
    pick = torch.randperm(len(index), generator=session.cpu_generator)[:limit]
    return index[pick.to(index.device)].sort().values


def concat(*parts: TensorData) -> TensorData:
    return TensorData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


class WithExtra(Defense):
    """A training stage that adds fixed ``extra`` examples to the data and otherwise behaves as
    ``parent`` (its augmentation, targets, loss, regularisers and after-step hook), so a defense
    composed with others keeps their hooks. The trainer records the stage's data copies as
    (originals + extras) / originals."""

    def __init__(self, parent: Defense, extra: TensorData) -> None:  # noqa: D107
        # Not the dataclass __init__: a stage has no user parameters.
        self.parent = parent
        self.extra = extra

    def __repr__(self) -> str:
        return f"WithExtra({self.parent!r}, {len(self.extra)} extra)"

    def augment(self, data, info, generator):
        return self.parent.augment(concat(data, self.extra.to(data.x.device)), info, generator)

    def targets(self, labels, num_classes):
        return self.parent.targets(labels, num_classes)

    def batch_targets(self, labels, ctx):
        return self.parent.batch_targets(labels, ctx)

    def loss(self, model, x, y, ctx):
        return self.parent.loss(model, x, y, ctx)

    def regularizer(self, model, x, y, logits, ctx):
        return self.parent.regularizer(model, x, y, logits, ctx)

    def after_step(self, model, ctx):
        return self.parent.after_step(model, ctx)


class IndexedStage(Defense):
    """A stage whose per-example targets are not class labels (reconstruction targets, soft
    labels). Its data is ``TensorData(inputs, index)``: the "labels" the trainer batches are row
    indices into the stage's own tables, so each batch finds its targets exactly."""

    def __init__(self) -> None:  # noqa: D107 - no user parameters
        pass

    def __repr__(self) -> str:
        return type(self).__name__


def indexed(x: torch.Tensor) -> TensorData:
    return TensorData(x, torch.arange(len(x), device=x.device))


def reset_parameters(module: nn.Module) -> None:
    """Re-initialise every layer that knows how (fresh weights from the global RNG)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


# 002's fine-tuning (sec. 4 and supplement Table 3): MNIST 5 epochs ("we cut the learning rate
# by 2x after four epochs"), CIFAR-10 50 epochs ("we cut the learning rate by 2x for the last 10
# epochs"), base learning rate 5e-4 and batches of 100 on both, SGD with "momentum: 0.9, and
# weight decay: 0.0005" (as the references), "identical fine-tuning policies and
# hyper-parameters for different defense methods". The toy sets follow MNIST.
FINETUNE_EPOCHS = {"mnist": 5, "cifar": 50, "toy": 5}
FINETUNE_CUT = {"mnist": 1, "cifar": 10, "toy": 1}
FINETUNE_LR = 5e-4
FINETUNE_OPTIMIZER = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
                      "batch_size": 100}


def finetune_schedule(family: str, epochs: int | None = None, cut_epochs: int | None = None,
                      lr: float | None = None, optimizer: str = "sgd") -> list[dict]:
    """002's schedule for the dataset family, each value replaced where given: ``epochs -
    cut`` epochs at ``lr``, then ``cut`` at ``lr / 2`` (``cut`` at most ``epochs - 1``, 0 for
    one epoch), as ``session.train`` keywords; ``optimizer="sgd"`` is 002's (SGD, momentum
    0.9, weight decay 5e-4, batches of 100), ``"suite"`` keeps the suite's optimizer and batch
    size."""
    epochs = FINETUNE_EPOCHS.get(family, 5) if epochs is None else epochs
    cut = FINETUNE_CUT.get(family, 1) if cut_epochs is None else cut_epochs
    lr = FINETUNE_LR if lr is None else lr
    cut = min(max(cut, 0), epochs - 1) if epochs > 1 else 0
    extra = dict(FINETUNE_OPTIMIZER) if optimizer == "sgd" else {}
    stages = [{"epochs": epochs - cut, "lr": lr, **extra}]
    if cut:
        stages.append({"epochs": cut, "lr": lr / 2, **extra})
    return stages


class FineTuning(Defense):
    """The fine-tuning schedule 002 runs for Deep Defense, Adv. Train I and Parseval alike
    (:func:`finetune_schedule`), as parameters shared by those plugins: they train from the
    reference model (``needs_reference``) for ``epochs`` at ``lr``, the last ``cut_epochs`` at
    ``lr / 2``, with 002's SGD (momentum 0.9, weight decay 5e-4, batches of 100) or, with
    ``optimizer="suite"``, the suite's optimizer and batch size.

    Why the optimizer matters (measured on real MNIST, ``mlp-002``, a 5-epoch Adam reference,
    rho_2 of DeepFool over the test images): on 9,000 training images with 3,000 DeepFool
    examples, fine-tuning by Adam at 5e-4 *lowers* rho_2 for Adv. Train I and clean
    fine-tuning alike (0.091 -> 0.076 / 0.077; Adam keeps training the under-trained
    reference and sharpens it: accuracy 0.948 -> 0.968), while by 002's SGD Adv. Train I
    raises it (0.101) and clean fine-tuning leaves it (0.090). On 18,000 images with every one
    attacked (1,000 test images): reference 0.087, clean fine-tuning 0.092, Adv. Train I 0.109
    (1.25x; 002 Table 1, on all 60,000: 0.111 -> 0.162)."""

    epochs: int | None = param(None, ge=1, help="fine-tuning epochs (None: 002's 5 MNIST-like, "
                                                 "50 CIFAR-like)")
    cut_epochs: int | None = param(None, ge=0, help="last epochs at half the learning rate "
                                                    "(None: 002's 1 MNIST-like, 10 CIFAR-like)")
    lr: float | None = param(None, gt=0, help="fine-tuning learning rate (None: 002's 5e-4)")
    optimizer: Literal["sgd", "suite"] = param(
        "sgd", help="002's SGD (momentum 0.9, decay 5e-4, batch 100) or the suite's optimizer")

    def schedule(self, info, config):
        return finetune_schedule(info.family, self.epochs, self.cut_epochs, self.lr,
                                 self.optimizer)


def train_stages(session, stages: list[dict], **kwargs: Any) -> None:
    """One ``session.train`` per stage of ``stages`` (``session.train`` keywords), each with
    ``kwargs`` too."""
    for stage in stages:
        session.train(**stage, **kwargs)
