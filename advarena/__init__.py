"""advarena: a plugin-based benchmark suite for the adversarial robustness of PyTorch image
classifiers.

The Python API for scripting::

    import advarena
    fgsm = advarena.attack("fgsm", eps=0.1)
    x_adv = fgsm(model, x, y)            # checked against fgsm's threat model
    defense = advarena.defense("gda-brelu")
    data = advarena.dataset("digits").load()
    net = advarena.architecture("cnn-001").build(data.info)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _create(kind: str, name: str, params: dict[str, Any]) -> Any:
    from .plugins import default_registry

    return default_registry().create(kind, name, **params)


def attack(name: str, **params: Any):
    """An attack plugin instance, e.g. ``attack("pgd", eps=0.3, steps=40)``."""
    return _create("attacks", name, params)


def defense(name: str, **params: Any):
    """A defense plugin instance; ``"a+b"`` composes (parameters grouped by part)."""
    return _create("defenses", name, params)


def dataset(name: str, **params: Any):
    """A dataset plugin instance; call ``.load(data_dir=None, download=False)`` for tensors."""
    return _create("datasets", name, params)


def architecture(name: str, **params: Any):
    """An architecture plugin instance; call ``.build(info, activation)`` for a module."""
    return _create("architectures", name, params)


def protocol(name: str, **params: Any):
    """A protocol plugin instance."""
    return _create("protocols", name, params)


__all__ = ["architecture", "attack", "dataset", "defense", "protocol", "__version__"]
