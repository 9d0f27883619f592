"""``advarena evaluate``: a model trained elsewhere through the whole protocol matrix."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import override_options, overrides_of, plugin_option


def dataset_info(reg, suite, name: str, data_dir: Path | None, download: bool):
    ds = reg.create("datasets", name, **suite.dataset_params.get(name, {}))
    return ds.load(data_dir, download).info


@click.command("evaluate")
@click.option("--model", "model", required=True, metavar="FILE.py:FACTORY|MODULE:FACTORY|NAME",
              help="The model: a factory in a Python file or an importable module (called "
                   "with the dataset's info if it takes an argument, returning an nn.Module), "
                   "or the name of a published model ('advarena list models').")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              metavar="W.safetensors",
              help="The module's state dict as safetensors (never unpickled); default: the "
                   "factory's own weights.")
@click.option("--dataset", "dataset", default=None,
              help="The dataset it classifies (default: a published model's own, else the "
                   "suite's first).")
@click.option("--name", "name", default=None, help="Its label on the leaderboard (default: "
                                                    "the factory's or model's name).")
@click.option("--suite", default="quick", show_default=True,
              help="A shipped suite name or a path to a suite TOML file.")
@click.option("--protocol", "protocols", multiple=True, help="Restrict to these protocols.")
@click.option("--store", "store_dir", default=".advarena", show_default=True,
              type=click.Path(path_type=Path), help="Result store directory.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--seed", type=int, default=None, help="Run this seed instead of the suite's.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where on-disk datasets (mnist, cifar10, ...) live.")
@click.option("--download", is_flag=True, help="Allow downloading on-disk datasets.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Export every stored metric record as JSON to this file.")
@click.option("--quiet", is_flag=True, help="No progress display.")
@override_options
@plugin_option
def evaluate_cmd(model, weights, dataset, name, suite, protocols, store_dir, device, seed,
                 data_dir, download, output, quiet, sets, eps, examples, epochs) -> None:
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
      advarena evaluate --model digits-cnn-001 --examples 100 --eps 0.1
    """
    from ..errors import AdvarenaError
    from ..external import resolve
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
                       overrides=overrides_of(sets, eps, examples, epochs),
                       externals=externals)
    sys.exit(code)


def published_dataset(reg, model: str) -> str | None:
    """The dataset a published model (``--model NAME``) declares, if it is one."""
    if ":" in model:
        return None
    try:
        return getattr(reg.get("models", model), "dataset", "") or None
    except Exception:  # not a published name: resolve() explains
        return None
