"""advarena: a plugin-based benchmark suite for the adversarial robustness of PyTorch image
classifiers.

The Python API for scripting::

    import advarena
    table = advarena.evaluate(my_model, dataset="digits")   # every protocol; a DataFrame
    table = advarena.results(".advarena")                   # every stored record
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


def evaluate(model: Any, dataset: str | None = None, suite: str = "quick", *,
             weights: str | None = None, name: str | None = None, store: str = ".advarena",
             device: str = "auto", protocols: list[str] | None = None, seed: int | None = None,
             data_dir: str | None = None, download: bool = False,
             eps: float | list[float] | str | None = None, examples: int | None = None,
             epochs: int | None = None, sets: list[str] = ()):
    """Evaluate a trained classifier through every protocol of ``suite``, never training it,
    and return its metric records as a pandas DataFrame (the columns of :func:`results`).

    ``model``: an ``nn.Module`` mapping inputs in the dataset's box to logits (bounds default
    to the dataset's, [0, 1] for the shipped ones; wrap it in
    ``advarena.models.Classifier(net, bounds=(lo, hi))`` for another box), or the text
    ``"FILE.py:FACTORY"`` / ``"package.module:FACTORY"`` / a published model's name, as
    ``advarena evaluate --model`` takes. ``weights``: a safetensors state dict to load into it.
    The reference and shared models are trained (or reused from ``store``) as for any
    defense; the model's rows are marked ``external`` with its weights' SHA-256. ``eps``
    (e.g. ``8/255`` or ``[0.05, 0.1]``), ``examples``, ``epochs`` (of the shared models) and
    ``sets`` (``["attacks.pgd.steps=100"]``) override suite values as the command line's
    ``--eps``, ``--examples``, ``--epochs`` and ``--set`` do. Raises
    :class:`~advarena.errors.AdvarenaError` when a cell failed.

    Example::

        df = advarena.evaluate(net, dataset="digits", examples=100)
        df[df.headline][["metric", "eps", "value", "ci_low", "ci_high"]]
    """
    import io
    from pathlib import Path

    from rich.console import Console

    from .cli.run_command import execute_run
    from .errors import AdvarenaError
    from .external import dataset_info, resolve
    from .suite import load_suite

    chosen = {}

    def externals(reg, s):
        ext = resolve(model, dataset_info(reg, s, s.datasets[0],
                                          Path(data_dir) if data_dir else None, download),
                      reg, weights=weights, name=name)
        chosen.update(label=ext.label, sha=ext.weights_sha256)
        return [ext]

    summary: dict = {}
    code = execute_run(Console(file=io.StringIO()), suite=suite, defenses=[],
                       datasets=[dataset or load_suite(suite).datasets[0]],
                       protocols=list(protocols or ()),
                       store_dir=Path(store), device=device, seed=seed,
                       data_dir=Path(data_dir) if data_dir else None, download=download,
                       output=None, quiet=True,
                       overrides={"sets": list(sets), "eps": eps, "examples": examples,
                                  "epochs": epochs},
                       externals=externals, summary_out=summary)
    if code != 0:
        first = (summary.get("failures") or [{}])[0]
        raise AdvarenaError(f"{summary.get('failed', 0)} cells failed, "
                            f"{summary.get('skipped', 0)} skipped; first: {first.get('cell')}: "
                            f"{first.get('error')}")
    frame = results(store)
    mine = (frame["defense"] == chosen["label"]) & (frame["external_weights_sha256"]
                                                    == chosen["sha"])
    return frame[mine].reset_index(drop=True)


def results(store: Any = ".advarena"):
    """Every metric record of a store as a pandas DataFrame, one row each: the export keys
    (dataset, architecture, defense, params, seed, protocol, attack, eps, metric, value, n,
    ci_low, ci_high), then labels and provenance (norm, headline, external, the evaluated
    model's train cell and weights' SHA-256, cell, run, device, versions, extra). The store is
    opened read-only."""
    from .report.export import results_frame

    return results_frame(store)


__all__ = ["architecture", "attack", "dataset", "defense", "evaluate", "protocol", "results",
           "__version__"]
