"""AEC: an autoencoder stacked before the classifier (Gu & Rigazio 2014), as evaluated by Chen,
Li, Vorobeychik (003)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from advarena.api import Defense
from advarena.models import Classifier, InputTransform
from advarena.params import param

from ._stages import IndexedStage, craft, indexed, make_attack, subsample

# 003 sec. 4.1: "a three-hidden-layer autoencoder (784-256-128-256-784 neurons)".
HIDDEN = (256, 128, 256)


class Autoencoder(InputTransform):
    """A fully connected autoencoder ``d - hidden... - d`` on the flattened input, ReLU between
    layers, and a sigmoid output scaled into the input box (so its outputs are valid inputs).
    ``d`` is the input size (784 for MNIST, 64 for the 8x8 digits, 3072 for CIFAR-10).

    Differentiable: white-box attacks differentiate through it (no BPDA needed)."""

    differentiable = True

    def __init__(self, input_shape: tuple[int, ...], hidden: tuple[int, ...],
                 bounds: tuple[float, float]) -> None:
        super().__init__()
        d = math.prod(input_shape)
        dims = (d, *hidden, d)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)
        self.lo, self.hi = float(bounds[0]), float(bounds[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.layers(x.flatten(1))
        return (self.lo + (self.hi - self.lo) * torch.sigmoid(z)).view_as(x)


def reconstruction_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example Euclidean distance ``||s(x') - x||_2`` (003's term), smoothed at 0."""
    return ((out - target).flatten(1).pow(2).sum(1) + 1e-12).sqrt()


class StackedTraining(nn.Module):
    """What the trainer optimises in the autoencoder stage: the autoencoder, with the trained
    classifier network held frozen and *unregistered* (so the optimiser and the pass counter
    see the autoencoder only).

    In training mode ``forward`` returns the reconstruction (the trained network's output: one
    forward pass per example); in eval mode it returns the stacked classifier's logits, so the
    trainer's validation accuracy after each epoch is the AEC's accuracy on clean inputs."""

    def __init__(self, autoencoder: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self._frozen = [net]  # a list: not registered as a submodule

    @property
    def net(self) -> nn.Module:
        return self._frozen[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.autoencoder(x)
        return out if self.training else self.net(out)


class AutoencoderStage(IndexedStage):
    """Loss of the autoencoder stage, on ``TensorData(inputs, row)``: the mean over the batch of
    ``||s(x'_i) - x_i||_2`` plus, for IAEC, ``ce_weight * H(y_i, f(s(x'_i)))`` with the frozen
    classifier ``f``."""

    def __init__(self, clean: torch.Tensor, labels: torch.Tensor, ce_weight: float) -> None:
        self.clean = clean
        self.labels = labels
        self.ce_weight = float(ce_weight)

    def loss(self, model, x, y, ctx):
        out = model(x)
        loss = reconstruction_error(out, self.clean[y]).mean()
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(model.net(out), self.labels[y])
        return loss


class AEC(Defense):
    """AEC: an autoencoder trained to map adversarial examples (and clean inputs) back to the
    clean inputs, stacked in front of the trained classifier.

    Paper: Chen, Li, Vorobeychik (003) sec. 3.2 and 4.1, after Gu & Rigazio, "Towards Deep
    Neural Network Architectures Robust to Adversarial Examples" (arXiv 1412.5068): "a
    three-hidden-layer autoencoder (784-256-128-256-784 neurons). We train the autoencoder to
    map adversarial examples ... to the original images, and ... also ... to map original data
    back to itself."

    Procedure (stages of the trainer):

    1. train the classifier network (the composed defense's hooks; plain by default);
    2. craft adversarial examples of the training set against the trained classifier with the
       ``attack`` plugin through the harness (once; failed minimal attacks return the input,
       which then is one more clean -> clean pair);
    3. train the autoencoder (classifier frozen) on the pairs adversarial -> clean and
       clean -> clean with the loss ``mean ||s(x') - x||_2`` (003's norm; IAEC adds a
       cross-entropy term); the trainer validates the stacked classifier after each epoch.

    Composition: a composed defense's hooks (augmentation, loss, regularisers, after-step)
    train the classifier in stage 1 (``gda+aec``: the classifier on the N + 1 copies); the
    autoencoder stage has its own loss and data and none of them (they are defenses of the
    classifier). A second ``fit`` owner (``rad+aec``) is refused at construction.

    The trained autoencoder is the classifier's input transform (``session.transform``); it is
    differentiable, so white-box attacks go through the whole stack honestly (003 sec. 4.5 and
    Gu & Rigazio note the stack then needs *smaller* perturbations to fool).

    Choices: hidden layers (256, 128, 256) for every dataset, the input/output layer sized to
    the input; ReLU hidden units, sigmoid output scaled into the box; the default attack is
    ``adam-evasion`` (003 sec. 4.3: "the AEC is trained on the adam model, which offers the best
    classification results"); ``fgsm`` uses ``eps`` (003's fgs_0.1).

    Cost: the classifier's training (as ``none``), one attack of the training set (measured
    as one-off work ``crafting`` in the cost record), then ``ae_epochs`` epochs of the
    autoencoder over 2 copies of the data (adversarial + clean) at 1 forward + 1 backward pass
    of the autoencoder each. Inference adds the autoencoder's forward pass.

    Parameters:
        attack ("fgsm" | "coordinate-greedy" | "adam-evasion", "adam-evasion"): the adversary.
        eps (float, 0.1): FGSM budget (fgsm only).
        hidden (tuple[int, ...], (256, 128, 256)): hidden layer widths.
        ae_epochs (int | None, None): autoencoder epochs (None: the suite's epochs).
        max_examples (int, 0): attack at most this many training examples (0: all).
        attack_params (tuple[str, ...], ()): extra attack parameters, "name=value".

    Example::

        advarena run --defense aec
    """

    name = "aec"
    paper = "Gu & Rigazio 2014 (arXiv 1412.5068); evaluated in 003 sec. 3.2, 4.1"
    kind = "input transform"

    attack: Literal["fgsm", "coordinate-greedy", "adam-evasion"] = param(
        "adam-evasion", help="adversary whose examples the autoencoder learns to undo")
    eps: float = param(0.1, ge=0, help="FGSM budget (attack='fgsm' only)")
    hidden: tuple[int, ...] = param(HIDDEN, ge=1, help="hidden layer widths")
    ae_epochs: int | None = param(None, ge=1, help="autoencoder epochs (None: suite's)")
    max_examples: int = param(0, ge=0, help="attack at most this many examples (0: all)")
    attack_params: tuple[str, ...] = param((), help="extra attack parameters, 'name=value'")

    # Weight of the cross-entropy term; AEC has none (IAEC declares it as a parameter).
    ce_weight = 0.0
    # After ``fit``: the (adversarial, clean) training pairs of the autoencoder. Not annotated,
    # so not a parameter.
    pairs = None

    def training_attacks(self) -> tuple[str, ...]:
        return (self.attack,)

    def input_transform(self, info):
        return Autoencoder(info.input_shape, self.hidden, info.bounds)

    def fit(self, session) -> None:
        session.train()
        adversary = make_attack(self.attack, self.attack_params, self)
        eps = self.eps if adversary.threat_model.budget == "bounded" else None
        pick = subsample(session, torch.arange(len(session.data), device=session.device),
                         self.max_examples)
        clean = session.data.subset(pick)
        # The attacked model is the trained classifier alone (003: adversarial examples of the
        # classifier; the autoencoder is not trained yet).
        x_adv = craft(session, adversary, Classifier(session.model, session.info.bounds), clean,
                      eps=eps)
        self.pairs = (x_adv, clean.x)
        inputs = torch.cat([x_adv, clean.x])
        targets = torch.cat([clean.x, clean.x])
        labels = torch.cat([clean.y, clean.y])
        if session.transform is None:
            session.transform = self.input_transform(session.info)
        autoencoder = session.transform.to(session.device)
        net = session.model
        grads = [p.requires_grad for p in net.parameters()]
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        try:
            session.train(epochs=self.ae_epochs, data=indexed(inputs),
                          defense=AutoencoderStage(targets, labels, self.ce_weight),
                          model=StackedTraining(autoencoder, net))
        finally:
            for p, g in zip(net.parameters(), grads):
                p.requires_grad_(g)
        autoencoder.eval()
        session.transform = autoencoder
