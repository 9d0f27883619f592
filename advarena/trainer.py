"""The shared trainer. Every defense trains through it, so every defense's cost is measured the
same way: wall time per epoch, validation accuracy over time, and passes per training example.

Passes are counted by hooks on the network, not reported by the defense, in **example-passes
through the network** (``PASS_UNIT``): a forward pass is one example (row) pushed through the
network during a training step (crafting included); a backward pass is one row of a forward
output that a gradient sweep (a ``backward()`` or ``autograd.grad`` call) flowed back through.
So a sweep through two forward branches of B rows each counts 2B (fgsm-at's training sweep
through ``x`` and ``x_adv``), and one ``autograd.grad(..., is_grads_batched=True)`` call with M
cotangents counts M times its rows (DeepFool's per-class gradients), exactly what the same
computation done with explicit loops counts.

000 Table I counts differently: a backward pass there is one *sweep* per example, however many
forward branches it flows through (virtual-alpha with KL needs "a second forward-pass ... but no
additional backward-pass": 2 forward + 1 backward sweep). That unit is kept beside the first
(``backward_sweeps_per_example``, ``SWEEP_UNIT``); both agree wherever each sweep reaches one
branch (``none`` 1 + 1, PGD training with I steps (I + 1) + (I + 1), GDA N + 1 copies at
1 + 1 each). Second-order work (the training sweep of a double-backprop regulariser through its
inner gradients) is not counted separately: it shows in the time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .api.attack import Attack
from .api.data import DatasetInfo, TensorData
from .api.defense import Defense
from .models import Classifier

try:  # one id per autograd sweep; without it each output's gradient counts as a sweep
    _graph_task_id = torch._C._current_graph_task_id
except AttributeError:  # pragma: no cover - very old torch
    _graph_task_id = None

# What the pass counts of a cost record mean (stored with it; the leaderboard shows them).
PASS_UNIT = "example-passes through the network per training example"
SWEEP_UNIT = "autograd sweeps per training example (000 Table I's backward passes)"


def _cotangents(grad: torch.Tensor) -> int:
    """How many cotangents a gradient stands for: 1, or M inside an ``autograd.grad`` call with
    ``is_grads_batched=True`` (M vmapped backward passes, one hook call on a batched tensor
    whose visible shape is one cotangent's)."""
    try:
        if not torch._C._functorch.is_legacy_batchedtensor(grad):
            return 1
        for level in range(1, 32):  # the vmap level of the batched dimension
            # At a level the tensor is batched at, the batch size given is ignored (0 here);
            # at any other level the result has that size, 0.
            size = torch._remove_batch_dim(grad, level, 0, 0).shape[0]
            if size:
                return int(size)
    except (AttributeError, RuntimeError):  # pragma: no cover - other torch internals
        pass
    return 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of a train cell (from the suite)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    # Mixed precision of the training step (``torch.autocast``): "off", "bf16" or "fp16".
    # Attacks run inside training (adversarial training) stay in float32 unless
    # ``amp_attacks``. Both change the trained weights, so they are part of the cell key;
    # at their defaults they are left out of it (keys of full-precision cells never change).
    amp: str = "off"
    amp_attacks: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("lr", "momentum", "weight_decay", "val_fraction"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name),
                                                                       (int, float)):
                raise ValueError(f"{name} must be a number, got {getattr(self, name)!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1)")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}")
        if not isinstance(self.amp_attacks, bool):
            raise ValueError(f"amp_attacks must be true or false, got {self.amp_attacks!r}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for name in _KEY_OPTIONAL:  # at their defaults, left out: existing keys stay valid
            if out[name] == _KEY_OPTIONAL[name]:
                del out[name]
        return out


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _grad_scaler(device_type: str):
    try:
        return torch.amp.GradScaler(device_type)
    except AttributeError:  # torch < 2.3
        return torch.cuda.amp.GradScaler(enabled=device_type == "cuda")
_KEY_OPTIONAL = {"amp": "off", "amp_attacks": False}


class PassCounter:
    """Counts forward and backward example-passes (and sweeps) through a module while
    ``active`` (see the module docstring for the units)."""

    def __init__(self, module: nn.Module) -> None:
        self.active = False
        self.forward_examples = 0
        self.backward_examples = 0  # rows of every forward output each sweep reached
        self.sweeps = 0
        self.sweep_examples = 0  # rows of the first output each sweep reached (000's unit)
        self._seen: set[int] = set()
        self._handle = module.register_forward_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self.active or not isinstance(output, torch.Tensor):
            return
        self.forward_examples += output.shape[0]
        if output.requires_grad:
            output.register_hook(self._on_backward)

    def _on_backward(self, grad: torch.Tensor) -> None:
        k = _cotangents(grad)
        self.backward_examples += k * grad.shape[0]
        task = _graph_task_id() if _graph_task_id is not None else -1
        if task == -1 or task not in self._seen:
            self._seen.add(task)
            self.sweeps += k
            self.sweep_examples += k * grad.shape[0]

    def remove(self) -> None:
        self._handle.remove()


def require_declared(defense: Defense, name: str) -> None:
    """Refuse to build attack ``name`` inside the training of ``defense`` unless the defense
    declares it in ``training_attacks()``: the planner puts the code of the declared attacks
    into the defense's cell key, and an undeclared one would leave a stale key behind an edit."""
    from .errors import PluginError
    from .plugins import default_registry

    reg = default_registry()
    canonical = reg.entry("attacks", name).name
    declared = {reg.entry("attacks", a).name for a in defense.training_attacks()}
    if canonical not in declared:
        raise PluginError(
            f"defense '{defense.name}' builds attack '{canonical}' inside training but its "
            f"training_attacks() names {', '.join(sorted(declared)) or 'none'}; declare it, so "
            f"that its code enters the defense's cell keys")


class StepContext:
    """What a defense's hooks see during one training step."""

    def __init__(self, session: "TrainingSession", defense: Defense, epoch: int,
                 step: int, rows: torch.Tensor | None = None) -> None:
        self.session = session
        # The batch's row indices into the stage's augmented training set (None outside one).
        self.rows = rows
        self.defense = defense
        self.info = session.info
        self.device = session.device
        self.epoch = epoch
        self.step = step
        self.generator = session.generator

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy against the defense's targets (soft ones if it sets them)."""
        soft = self.defense.batch_targets(labels, self)
        if soft is None:
            return F.cross_entropy(logits, labels)
        return -(soft * F.log_softmax(logits, dim=1)).sum(1).mean()

    def regularizers(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     logits: torch.Tensor) -> torch.Tensor:
        term = self.defense.regularizer(model, x, y, logits, self)
        return logits.new_zeros(()) if term is None else term

    def attack_precision(self):
        """The precision of inner-attack math a defense computes itself inside ``loss`` or
        ``regularizer`` (VAT's power iteration, e2SAD's second step, Deep Defense's DeepFool):
        float32, leaving the step's autocast, as :meth:`run_attack` does for attack plugins,
        unless the config asks for ``amp_attacks``. Inputs made under autocast (logits) must be
        cast or recomputed inside it."""
        return self.session.attack_precision()

    def attack(self, name: str, **params: Any) -> Attack:
        """The attack plugin ``name``, which the session's defense must declare in
        ``training_attacks()`` (so its code is in the defense's cell key)."""
        from .plugins import default_registry

        require_declared(self.session.defense, name)
        return default_registry().create("attacks", name, **params)

    def run_attack(self, attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   eps: float | None = None) -> torch.Tensor:
        """Adversarial examples for training, checked like every attack output. The network is
        wrapped with the dataset's bounds so the attack clips to the right box."""
        from .threat import run_checked

        target = model if hasattr(model, "bounds") else Classifier(model, self.info.bounds)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.session.cpu_generator))
        with self.session.attack_precision():
            return run_checked(attack, target, x, y, eps=eps, seed=seed)


@dataclasses.dataclass
class EpochRecord:
    stage: int
    epoch: int
    seconds: float
    train_loss: float
    val_accuracy: float


class TrainingSession:
    """One train cell: the network, its data and the record of what training cost.

    ``fit`` of a defense calls :meth:`train` once or several times (multi-stage defenses), may
    replace ``model`` or set ``transform`` (an input transform trained alongside, e.g. an
    autoencoder), and can use ``reference`` (the trained undefended model) when it declared
    ``needs_reference``.
    """

    def __init__(self, model: nn.Module, info: DatasetInfo, train: TensorData,
                 val: TensorData, config: TrainConfig, defense: Defense, *,
                 device: torch.device, seed: int, reference: nn.Module | None = None,
                 transform: nn.Module | None = None,
                 progress: Callable[[str, int, int], None] | None = None,
                 channels_last: bool = False) -> None:
        self.model = model.to(device)
        # channels_last (NHWC) speeds up convolutions on GPUs with tensor cores. It changes the
        # memory layout only, so it is not part of the key; but it applies to the 4-d conv
        # weights too (``model.to(memory_format=...)``), which are then *not* contiguous: code
        # that treats a weight as a matrix must reshape and write back (``parseval`` does).
        self.channels_last = channels_last
        if transform is not None:
            transform = transform.to(device)
        self.info = info
        self.data = train.to(device)
        self.val = val.to(device)
        self.config = config
        self.defense = defense
        self.device = device
        self.seed = seed
        self.reference = reference
        self.transform = transform
        self.progress = progress or (lambda stage, done, total: None)
        self.cpu_generator = torch.Generator().manual_seed(seed)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.history: list[EpochRecord] = []
        self.original_examples = len(train)
        self.trained_examples = 0
        self.weighted_sweeps = 0.0
        self.forward_examples = 0
        self.backward_examples = 0
        self.stages = 0
        # Free-form, JSON-ready facts a defense reports about its training (e.g. RAD's
        # examples added per round); stored with the train cell's result.
        self.notes: dict[str, Any] = {}
        # One-off work between stages, measured by :meth:`measure`.
        self.one_off: dict[str, dict[str, float]] = {}

    def autocast(self):
        """The mixed-precision context of a training step (a no-op when ``amp`` is off)."""
        dtype = AMP_DTYPES[self.config.amp]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def attack_precision(self):
        """Attacks inside training run in float32 unless the config asks for ``amp_attacks``."""
        if self.config.amp == "off" or self.config.amp_attacks:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def make_optimizer(self, params, lr: float | None = None, *, optimizer: str | None = None,
                       momentum: float | None = None,
                       weight_decay: float | None = None) -> torch.optim.Optimizer:
        """The suite's optimizer, each setting replaced where given (a fine-tuning schedule
        runs its paper's optimizer)."""
        lr = self.config.lr if lr is None else lr
        name = self.config.optimizer if optimizer is None else optimizer
        momentum = self.config.momentum if momentum is None else momentum
        decay = self.config.weight_decay if weight_decay is None else weight_decay
        # foreach: one fused update over all parameters rather than a loop over them (the
        # default only on CUDA); the same arithmetic, bitwise, and a quarter less time per
        # step of a small CNN on the CPU (measured on 001's digits CNN).
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay,
                                   foreach=True)
        if name != "adam":
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")
        return torch.optim.Adam(params, lr=lr, weight_decay=decay, foreach=True)

    @contextlib.contextmanager
    def measure(self, label: str, model: nn.Module | None = None):
        """Count the passes through ``model`` (default: the session's network) and the time of
        one-off work between stages, such as crafting a fixed adversarial training set from
        the reference or computing a teacher's soft labels. It is added to the cost record, so
        every defense's cost covers all of its training work."""
        counter = PassCounter(self.model if model is None else model)
        counter.active = True
        start = time.perf_counter()
        try:
            yield
        finally:
            counter.active = False
            counter.remove()
            rec = self.one_off.setdefault(label, {"seconds": 0.0, "forward_examples": 0,
                                                  "backward_examples": 0, "sweep_examples": 0})
            rec["seconds"] += time.perf_counter() - start
            rec["forward_examples"] += counter.forward_examples
            rec["backward_examples"] += counter.backward_examples
            rec["sweep_examples"] += counter.sweep_examples

    def train(self, *, epochs: int | None = None, data: TensorData | None = None,
              defense: Defense | None = None, model: nn.Module | None = None,
              lr: float | None = None,
              validate: Callable[[nn.Module], float] | None = None,
              optimizer: str | None = None, momentum: float | None = None,
              weight_decay: float | None = None, batch_size: int | None = None) -> None:
        """Run the standard loop: ``defense.augment`` once, then for each batch ``defense.loss``,
        one optimiser step and ``defense.after_step``; after each epoch the validation accuracy
        (``validate(model)``, by default the accuracy of ``model`` on the validation split).
        ``optimizer``, ``momentum``, ``weight_decay`` and ``batch_size`` replace the suite's
        for this stage (a paper's fine-tuning schedule)."""
        defense = self.defense if defense is None else defense
        model = self.model if model is None else model
        epochs = self.config.epochs if epochs is None else epochs
        base = self.data if data is None else data.to(self.device)
        augmented = defense.augment(base, self.info, self.generator)
        stage = self.stages
        self.stages += 1
        optimizer = self.make_optimizer(model.parameters(), lr, optimizer=optimizer,
                                        momentum=momentum, weight_decay=weight_decay)
        counter = PassCounter(model)
        bs = self.config.batch_size if batch_size is None else batch_size
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        # fp16 needs loss scaling against underflowing gradients; bf16 has float32's range.
        scaler = _grad_scaler(self.device.type) if self.config.amp == "fp16" else None
        try:
            for epoch in range(epochs):
                model.train()
                start = time.perf_counter()
                order = torch.randperm(len(augmented), generator=self.cpu_generator)
                losses = []
                for step, i in enumerate(range(0, len(augmented), bs)):
                    idx = order[i:i + bs].to(self.device)
                    xb, yb = self._layout(augmented.x[idx]), augmented.y[idx]
                    ctx = StepContext(self, defense, epoch, step, rows=idx)
                    counter.active = True
                    sweeps_before = counter.sweeps
                    with self.autocast():
                        loss = defense.loss(model, xb, yb, ctx)
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                    else:
                        loss.backward()
                    counter.active = False
                    self.weighted_sweeps += (counter.sweeps - sweeps_before) * len(idx)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    with torch.no_grad():
                        defense.after_step(model, ctx)
                    losses.append(loss.detach().float())
                self.trained_examples += len(augmented)
                mean_loss = float(torch.stack(losses).mean()) if losses else math.nan
                # Epoch time excludes validation, as 000 Table I times training alone.
                seconds = time.perf_counter() - start
                val_acc = (validate(model) if validate is not None
                           else self.accuracy(model, self.val))
                self.history.append(EpochRecord(stage, epoch, seconds, mean_loss, val_acc))
                self.progress(f"train stage {stage}", epoch + 1, epochs)
        finally:
            self.forward_examples += counter.forward_examples
            self.backward_examples += counter.backward_examples
            counter.remove()
            model.eval()

    def accuracy(self, model: nn.Module, data: TensorData) -> float:
        if len(data) == 0:
            return math.nan
        was_training = model.training
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(data.x[i:i + 1024]).argmax(1) == data.y[i:i + 1024]).sum())
                          for i in range(0, len(data), 1024))
        model.train(was_training)
        return correct / len(data)

    def cost(self) -> dict[str, Any]:
        """The cost record of this cell (000 Table I's columns, plus pass counts)."""
        seconds = [h.seconds for h in self.history]
        n = max(1, self.trained_examples)
        extra_fwd = sum(r["forward_examples"] for r in self.one_off.values())
        extra_bwd = sum(r["backward_examples"] for r in self.one_off.values())
        extra_sweeps = sum(r.get("sweep_examples", 0) for r in self.one_off.values())
        fwd = (self.forward_examples + extra_fwd) / n
        bwd = (self.backward_examples + extra_bwd) / n
        sweeps = (self.weighted_sweeps + extra_sweeps) / n
        # Training examples per original example and epoch, over all stages (RAD's grows).
        copies = n / max(1, self.original_examples * len(self.history))
        elapsed, curve = 0.0, []
        for h in self.history:
            elapsed += h.seconds
            curve.append([round(elapsed, 6), h.val_accuracy])
        return {
            "epochs": len(self.history),
            "stages": self.stages,
            "median_epoch_seconds": statistics.median(seconds) if seconds else 0.0,
            "total_seconds": sum(seconds) + sum(r["seconds"] for r in self.one_off.values()),
            "one_off": self.one_off,
            "data_copies": copies,
            "forward_per_example": fwd,
            "backward_per_example": bwd,
            "backward_sweeps_per_example": sweeps,
            "pass_unit": PASS_UNIT,
            "sweep_unit": SWEEP_UNIT,
            # per original training example and epoch: copies of the data times passes on each
            "passes_per_example": copies * (fwd + bwd),
            "val_accuracy_curve": curve,
            "final_val_accuracy": self.history[-1].val_accuracy if self.history else math.nan,
        }
