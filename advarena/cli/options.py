"""Options shared by several commands: ``--plugin FILE`` and the suite overrides."""

from __future__ import annotations

import click


def _load_plugins(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]):
    from ..plugin_files import use_plugin_files

    use_plugin_files(value)  # also forgets the files of an earlier command in this process
    return value


def plugin_option(f):
    """``--plugin FILE`` (repeatable), loaded before the other options are used."""
    return click.option(
        "--plugin", "plugin_files", multiple=True, metavar="FILE.py", is_eager=True,
        expose_value=False, callback=_load_plugins,
        help="Register the hooks of this Python file for this command, checked like an "
             "installed plugin (repeatable). Example: --plugin my_attack.py")(f)


def override_options(f):
    """``--set``, ``--eps``, ``--examples``, ``--epochs``: suite values without a suite file."""
    for opt in reversed([
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override any suite value (repeatable), validated as in a suite "
                          "file. Example: --set attacks.pgd.steps=100 --set "
                          "'protocols.white-box.attacks=[\"pgd\"]'"),
        click.option("--eps", "eps", default=None, metavar="LIST",
                     help="The eps sweep of every protocol that has one. Example: --eps "
                          "0.05,0.1 or --eps 4/255,8/255"),
        click.option("--examples", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Evaluation examples ([eval] n_examples). Example: --examples 1000"),
        click.option("--epochs", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Training epochs ([train] epochs). Example: --epochs 5"),
    ]):
        f = opt(f)
    return f


def overrides_of(sets, eps, examples, epochs) -> dict:
    return {"sets": list(sets), "eps": eps, "examples": examples, "epochs": epochs}
