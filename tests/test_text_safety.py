"""Plugin strings are shown as text only: no rich markup is interpreted, control characters
(ANSI/OSC escapes, C0/C1 controls, bidi overrides, zero-width characters) are escaped in the
terminal, Markdown and HTML, and names outside ASCII letters, digits, '-', '_' and '.' are
refused at start-up with one line naming the plugin and its distribution."""

from __future__ import annotations

import io
import types

import pytest
from rich.console import Console

import advarena.plugins as plugins
from advarena.api import Attack, Defense
from advarena.api.attack import ThreatModel
from advarena.errors import PluginError
from advarena.hookimpl import hookimpl
from advarena.params import param
from advarena.plugins import Registry, make_plugin_manager
from advarena.text import markdown, name_problem, printable

ESC = "\x1b"
# Strings a hostile plugin could print: colour, an OSC 8 hyperlink, a window-title OSC, a
# cursor move hidden by a carriage return, a C1 CSI, a right-to-left override, zero-width
# characters, a BOM, a bell.
HOSTILE = [f"{ESC}[31mred{ESC}[0m", f"{ESC}]8;;https://evil.example{ESC}\\link{ESC}]8;;{ESC}\\",
           f"{ESC}]0;owned\x07", "ok\r\x1b[2Kfake", "\x9b31m", "abc\u202edcba", "fgsm\u200b-at",
           "\ufeffx", "bell\x07", "a\u2028b", "\u2066isolate\u2069"]
VISIBLE_OK = ["Goodfellow et al. 2015 (arXiv 1412.6572)", "Ünïcödé naïve café", "中文 名称",
              "tabs\tand\nlines"]


def _raw_controls(text: str) -> list[str]:
    import unicodedata

    return [c for c in text if c not in "\n" and unicodedata.category(c) in
            ("Cc", "Cf", "Zl", "Zp", "Cs")]


@pytest.mark.parametrize("s", HOSTILE)
def test_printable_escapes_every_control_and_format_character(s):
    out = printable(s)
    assert _raw_controls(out) == []
    assert "\\" in out  # shown as an escape, not dropped silently
    assert _raw_controls(markdown(s)) == []


@pytest.mark.parametrize("s", VISIBLE_OK)
def test_printable_keeps_ordinary_text(s):
    assert printable(s, newlines=True) == s.replace("\t", "\\x09")


def test_markdown_neutralises_syntax():
    out = markdown("a|b <img src=x> [link](http://e) `code` *em*\nnext")
    assert out == ("a\\|b &lt;img src=x&gt; \\[link\\](http://e) \\`code\\` \\*em\\* "
                   "next")


# -- names -------------------------------------------------------------------------------------

IMPOSTORS = {
    "cyrillic-a": "fgsm-\u0430t",  # а (U+0430) for a
    "zero-width": "fgsm\u200b-at",
    "rich-markup": "fgsm[/bold]",
    "ansi": f"fgsm{ESC}[8m-at",
    "rtl-override": "ta-\u202emsgf",
    "dot-dot": "..",
    "slash": "xss/../x",
    "space": "fgsm at",
    "plus": "a+b",
    "too-long": "x" * 101,
}


def _hook_plugin(kind: str, *classes: type):
    hook = f"advarena_register_{kind}"
    ns = types.SimpleNamespace(**{hook: hookimpl(lambda: list(classes))})
    ns.__name__ = "hostile_names"
    return ns


def _attack(name: str, aliases: tuple = ()) -> type:
    return type("Impostor", (Attack,), {"name": name, "aliases": aliases, "paper": "x",
                                        "threat_model": ThreatModel("linf", "bounded"),
                                        "run": lambda self, model, x, y, eps=None, seed=None: x,
                                        "__module__": __name__})


@pytest.mark.parametrize("case", sorted(IMPOSTORS))
def test_names_outside_the_character_set_are_refused_at_start_up(case):
    name = IMPOSTORS[case]
    assert name_problem(name)
    for cls in (_attack(name), _attack("fine-name", aliases=(name,))):
        with pytest.raises(PluginError) as info:
            Registry(make_plugin_manager([_hook_plugin("attacks", cls)], entry_points=False))
        msg = str(info.value)
        assert "\n" not in msg and "hostile_names" in msg and "refused name" in msg
        assert _raw_controls(msg) == []  # the name is quoted escaped


def test_allowed_names_pass():
    for name in ("fgsm-at", "gda_brelu", "v1.2", "A9"):
        assert name_problem(name) is None
    Registry(make_plugin_manager([_hook_plugin("attacks", _attack("ok.name_1-x"))],
                                 entry_points=False))


def test_an_impostor_installed_beside_the_real_one_stops_advarena_list(monkeypatch, capsys):
    from advarena.cli.main import main

    impostor = _hook_plugin("defenses", type("FakeFGSMAT", (Defense,), {
        "name": IMPOSTORS["cyrillic-a"], "__module__": __name__}))

    def registry():
        return Registry(make_plugin_manager([impostor]))

    monkeypatch.setattr(plugins, "default_registry", registry)
    with pytest.raises(SystemExit) as info:
        main(["list"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hostile_names" in err[0] and "\\u0430" in err[0], err


# -- strings shown by the CLI ------------------------------------------------------------------

class Loud(Defense):
    """Summary with [bold]markup[/bold] and an escape \x1b[31m red."""

    name = "loud-strings"
    paper = "[/bold] [link=https://evil.example]click[/link] \x1b]8;;https://e\x1b\\x \u202egnp"
    note: str = param("[red]\x1b[5mblink", help="[/] help \x9b31m")


def test_advarena_list_shows_markup_and_escapes_as_text(monkeypatch, capsys):
    from advarena.cli import main as main_module

    registry = Registry(make_plugin_manager([_hook_plugin("defenses", Loud)]))
    monkeypatch.setattr(plugins, "default_registry", lambda: registry)
    buf = io.StringIO()
    monkeypatch.setattr(main_module, "console", Console(file=buf, width=400, highlight=False))
    main_module.main(["list", "defenses"])  # returns: no MarkupError on '[/bold]'
    out = buf.getvalue()
    assert "[/bold]" in out and "[link=https://evil.example]click[/link]" in out
    assert "[red]" in out
    assert _raw_controls(out) == [], [hex(ord(c)) for c in _raw_controls(out)]
    assert "\\x1b" in out and "\\u202e" in out


def test_error_lines_escape_what_they_quote(capsys, tmp_path):
    from advarena.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["run", "--suite", str(tmp_path / f"x{ESC}]0;owned\x07[/bold].toml")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert _raw_controls(err.replace("\n", "")) == [] and "[/bold]" in err


def test_run_report_and_progress_escape_plugin_strings():
    from advarena.cli.progress import RichProgress
    from advarena.cli.run_command import _report

    buf = io.StringIO()
    console = Console(file=buf, width=300, highlight=False, force_terminal=True)
    summary = {"run_id": "r", "done": 0, "cached": 0, "failed": 1, "skipped": 0,
               "cached_kinds": {}, "seconds": 0.0,
               "failures": [{"cell": "eval [/bold]", "error": f"attack 'x' raised: {ESC}]0;t\x07"
                                                               "[link=http://e]y[/link]"}],
               "warnings": [f"weight file w{ESC}[2J does not match"]}
    _report(console, summary, types.SimpleNamespace(defenses=["none"]), "store", None)
    cell = types.SimpleNamespace(title="train [/bold] \u202ex")
    progress = RichProgress(console)
    with progress:
        progress.advarena_run_started(run_id="r", total_cells=1)
        progress.advarena_cell_started(cell=cell)
        progress.advarena_cell_progress(cell=cell, stage="[/] stage \x1b[1A", done=1, total=2)
        progress.advarena_cell_finished(cell=cell, status="failed", seconds=0.0,
                                        error="[/red] boom")
    out = buf.getvalue()
    assert "[/bold]" in out and "[link=http://e]y[/link]" in out and "[/red] boom" in out
    # the only escape sequences left are rich's own styling (SGR 'm' codes, cursor control of
    # the live display); none of the plugin's: no OSC, no screen clear, no bidi override
    assert "\x1b]" not in out and "\x1b[2J" not in out and "\u202e" not in out
    assert "\\x1b]0;t" in out and "\\x1b[2J" in out


# -- Markdown and HTML -------------------------------------------------------------------------

def test_leaderboard_templates_escape_controls_in_markdown_and_html():
    from advarena.report.leaderboard import _env

    env = _env()
    hostile = f"{ESC}[31mx\u202e<b>[y](z)"
    md = env.from_string("{{ v | md }} {{ v }}").render(v=hostile)
    html = env.from_string("<p>{{ v }}</p>").render(v=hostile)
    for out in (md, html):
        assert _raw_controls(out) == [], out
    assert "<b>" not in html and "&lt;b&gt;" in html
    assert "\\[y\\]" in md


def test_compare_markdown_escapes_controls():
    from advarena.report.compare import md_escape

    assert _raw_controls(md_escape(f"a{ESC}[31m\u200bb|c")) == []
