"""The undefended reference."""

from advarena.api import Defense


class NoDefense(Defense):
    """Plain training with cross-entropy: the "base", "natural" or "reference" model.

    Paper: the baseline of every paper here (000 "Base Model", 001 "CNN", 002 "reference",
    003 "no defense", 004 "natural"). Cost: 1 forward + 1 backward pass per example.

    Example::

        advarena run --defense none
    """

    name = "none"
    paper = "baseline in 000-004"
    kind = "none"
