"""One-file plugins: ``--plugin FILE.py`` registers that file's hooks for one command, through
the same checks as an installed package; a published model (the models hook) arrives this way
too."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

import advarena.plugins as plugins
from tests.test_cli import invoke

TINY = Path(__file__).parent / "suites" / "tiny.toml"
PLUGINS = Path(__file__).parent / "plugins"

ZOO = textwrap.dedent('''
    from pathlib import Path

    import advarena
    from advarena.api import Model
    from advarena.hookimpl import hookimpl


    class TinyZooCNN(Model):
        """001's CNN on digits, from a file beside this plugin."""

        name = "tiny-zoo-cnn"
        paper = "none: a test fixture"
        dataset = "digits"
        architecture = "cnn-001"

        def build(self, info):
            return advarena.architecture("cnn-001").build(info)

        def weights(self):
            return Path(__file__).with_name("zoo.safetensors")


    @hookimpl
    def advarena_register_models():
        return [TinyZooCNN]
''')


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Each command sees only the files it was given."""
    yield
    plugins.PLUGIN_FILES.clear()
    plugins.default_registry.cache_clear()


def test_list_shows_a_plugin_files_defenses(capsys):
    code, out, err = invoke(["list", "defenses", "--json", "--plugin",
                             PLUGINS / "extra_defenses.py"], capsys)
    assert code == 0, err
    assert {"tanh-act", "l2-logits"} <= set(out.replace('"', " ").split())
    assert not any(name.startswith("advarena_plugin_file") for name in sys.path)
    # the next command without --plugin does not see it
    code, out, err = invoke(["list", "defenses", "--json"], capsys)
    assert code == 0 and "tanh-act" not in out


@pytest.mark.parametrize("case", ["missing", "syntax", "typo-hook", "duplicate"])
def test_bad_plugin_files_are_one_line(case, capsys, tmp_path):
    if case == "missing":
        path, expected = tmp_path / "nope.py", "not a Python file"
    elif case == "syntax":
        path = tmp_path / "broken.py"
        path.write_text("def oops(:\n")
        expected = "failed to import: SyntaxError"
    elif case == "typo-hook":
        path, expected = PLUGINS / "typo_hook_plugin.py", "advarena_register_attackz"
    else:
        path, expected = PLUGINS / "dup_plugin.py", "two plugins register"
    code, out, err = invoke(["list", "--plugin", path], capsys)
    assert code == 2, (out, err)
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_run_with_a_plugin_files_defense(capsys, tmp_path, single_thread):
    store = tmp_path / "store"
    code, out, err = invoke(["run", "--suite", TINY, "--defense", "l2-logits:weight=0.5",
                             "--plugin", PLUGINS / "extra_defenses.py", "--store", store,
                             "--device", "cpu", "--quiet", "--protocol", "white-box"], capsys)
    assert code == 0, err
    import advarena

    df = advarena.results(store)
    mine = df[df.defense == "l2-logits"]
    assert len(mine) and all(p == {"weight": 0.5} for p in mine["params"])


def test_a_published_model_from_a_plugin_file(capsys, tmp_path, single_thread):
    from safetensors.torch import save_file

    import advarena

    info = advarena.dataset("digits").load().info
    torch.manual_seed(0)
    save_file(advarena.architecture("cnn-001").build(info).state_dict(),
              str(tmp_path / "zoo.safetensors"))
    plugin = tmp_path / "zoo_plugin.py"
    plugin.write_text(ZOO)
    code, out, err = invoke(["list", "models", "--plugin", plugin], capsys)
    assert code == 0 and "tiny-zoo-cnn" in out
    store = tmp_path / "store"
    code, out, err = invoke(["evaluate", "--model", "tiny-zoo-cnn", "--plugin", plugin,
                             "--suite", TINY, "--store", store, "--device", "cpu", "--quiet",
                             "--protocol", "white-box"], capsys)
    assert code == 0, err
    df = advarena.results(store)
    mine = df[df.defense == "tiny-zoo-cnn"]
    assert len(mine) and mine["external"].all() and set(mine["architecture"]) == {"cnn-001"}
    assert {s["kind"] for s in mine["external_source"]} == {"zoo"}
