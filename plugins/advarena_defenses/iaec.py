"""IAEC: the improved autoencoder stacked with a classifier (Chen, Li, Vorobeychik, 003)."""

from __future__ import annotations

from advarena.params import param

from .aec import AEC


class IAEC(AEC):
    """IAEC: AEC whose autoencoder is also trained to make the frozen classifier label its
    output correctly, loss ``||s(x') - x||_2 + ce_weight * H(y, f(s(x')))``.

    Paper: Chen, Li, Vorobeychik, "Evaluation of Defensive Methods for DNNs Against Multiple
    Adversarial Evasion Models" (003) sec. 3.2: "we add a cross-entropy regularizer term as the
    loss function to help ensure that the output of AutoEncoder is classified correctly". The
    printed formula, ``J(x_i) = ||s(x_i) - x_i'|| + H(y_i, f(x_i))``, swaps x and x' and omits
    s inside H; advarena follows the text and METHODS.md: the autoencoder's output on the
    (adversarial or clean) input x' is compared with the clean x, and the classifier f (trained
    in stage 1, frozen) must label s(x') as y. The term applies to clean -> clean pairs too.

    Everything else (stages, architecture, attacks, defaults) is :class:`AEC`'s: the classifier
    is trained, adversarial examples of the training set are crafted against it with ``attack``
    (default ``adam-evasion``), then the autoencoder is trained with the loss above and stacked
    as the (differentiable) input transform.

    Cost: as AEC, plus one forward pass of the frozen classifier per autoencoder example and
    the backward pass through it (the trainer counts passes of the autoencoder: 1 forward +
    1 backward per example of the 2 data copies).

    Parameters:
        ce_weight (float, 1.0): weight of the cross-entropy term (003: 1).
        attack, eps, hidden, ae_epochs, max_examples, attack_params: as for ``aec``.

    Example::

        advarena run --defense iaec
    """

    name = "iaec"
    paper = "Chen, Li, Vorobeychik 2017 (003) sec. 3.2"
    kind = "input transform"

    ce_weight: float = param(1.0, ge=0, help="weight of the cross-entropy term H(y, f(s(x')))")
