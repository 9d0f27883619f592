"""``advarena evaluate``: a model trained elsewhere through the whole protocol matrix."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import override_options, overrides_of, plugin_option


@click.command("evaluate")
@click.option("--model", "model", required=True, metavar="FILE.py:FACTORY|MODULE:FACTORY|NAME",
              help="The model: a factory in a Python file or an importable module (called "
                   "with the dataset's info if it takes an argument, returning an nn.Module), "
                   "or the name of a published model ('advarena list models'). Example: "
                   "--model my_net.py:make_model")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              metavar="W.safetensors",
              help="The module's state dict as safetensors (never unpickled); default: the "
                   "factory's own weights. Example: --weights net.safetensors")
@click.option("--dataset", "dataset", default=None,
              help="The dataset it classifies (default: a published model's own, else the "
                   "suite's first). Example: --dataset digits")
@click.option("--name", "name", default=None,
              help="Its label on the leaderboard (default: the factory's or model's name). "
                   "Example: --name my-resnet")
@override_options
@plugin_option
def evaluate_cmd(model, weights, dataset, name, suite, protocols, store_dir, device, seed,
                 data_dir, download, output, quiet, executor, address, cell_timeout, dry_run,
                 sets, eps, examples, epochs) -> None:
    """Evaluate a model trained outside advarena through the suite's protocols, never training
    it. The reference and shared models (substitutes, ensemble members) are trained or reused
    as for any defense; the row is marked external, with its weights' SHA-256 and its
    factory's source hash as provenance (both enter its cells' keys). The training-cost
    protocol is skipped.

    \b
    Example:
      advarena evaluate --model my_net.py:make_model --weights net.safetensors --dataset digits
      advarena evaluate --model mypkg.models:resnet --weights r.safetensors --name my-resnet \\
          --suite cifar10 --data-dir ~/data --device cuda
      advarena evaluate --model their-model --plugin zoo.py --examples 100 --eps 0.1
    """
    from ..errors import AdvarenaError
    from ..external import dataset_info, resolve
    from ..plugins import default_registry
    from ..suite import load_suite
    from .main import console
    from .run_command import execute_run

    own = published_dataset(default_registry(), model)
    if own and dataset and dataset != own:
        raise AdvarenaError(f"published model '{model}' classifies {own}, not {dataset}; "
                            f"drop --dataset")
    chosen = dataset or own or load_suite(suite).datasets[0]

    def externals(reg, s):
        info = dataset_info(reg, s, chosen, data_dir, download)
        return [resolve(model, info, reg, weights=weights, name=name)]

    code = execute_run(console, suite=suite, defenses=[], datasets=[chosen],
                       protocols=list(protocols), store_dir=store_dir, device=device, seed=seed,
                       data_dir=data_dir, download=download, output=output, quiet=quiet,
                       executor=executor, address=address, cell_timeout=cell_timeout,
                       overrides=overrides_of(sets, eps, examples, epochs),
                       externals=externals, dry_run=dry_run)
    sys.exit(code)


def published_dataset(reg, model: str) -> str | None:
    """The dataset a published model (``--model NAME``) declares, if it is one."""
    if ":" in model:
        return None
    try:
        return getattr(reg.get("models", model), "dataset", "") or None
    except Exception:  # not a published name: resolve() explains
        return None


# The options evaluate shares with run (suite, protocol, store, device, seed, data, output,
# quiet, executor): the same objects, so they read and validate the same.
_SHARED = ("suite", "protocols", "store_dir", "device", "seed", "data_dir", "download", "output",
           "quiet", "executor", "address", "cell_timeout", "dry_run")


def _share_run_options() -> None:
    from .main import run_cmd

    own = [p for p in evaluate_cmd.params if p.name in ("model", "weights", "dataset", "name")]
    shared = [p for p in run_cmd.params if p.name in _SHARED]
    rest = [p for p in evaluate_cmd.params if p not in own]
    evaluate_cmd.params[:] = [*own, *shared, *rest]


_share_run_options()
