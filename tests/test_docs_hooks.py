"""docs/plugins.md documents every hook of advarena/hookspecs.py with its exact signature, its
parameters, when it is called and an example, and documents no hook that does not exist."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from advarena import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
HEADING = re.compile(r"^### `?(advarena_\w+)`?\s*$", re.M)


def hookspec_functions() -> dict[str, object]:
    """Every function of the module marked as a hook specification."""
    return {name: fn for name, fn in vars(hookspecs).items()
            if inspect.isfunction(fn) and hasattr(fn, "advarena_spec")}


def signature_line(name: str, fn) -> str:
    """``def name(a: T, ...) -> R`` with the annotations as written in the source (the module
    uses ``from __future__ import annotations``, so they are strings)."""
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        text = p.name
        if p.annotation is not inspect.Parameter.empty:
            text += f": {p.annotation}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        params.append(text)
    ret = "" if sig.return_annotation is inspect.Signature.empty else \
        f" -> {sig.return_annotation}"
    return f"def {name}({', '.join(params)}){ret}"


def normalise(text: str) -> str:
    return " ".join(text.replace("( ", "(").replace(" )", ")").split())


def sections() -> dict[str, str]:
    """Hook name -> the text of its section (up to the next heading of level 2 or 3)."""
    text = DOCS.read_text(encoding="utf-8")
    found = {}
    for m in HEADING.finditer(text):
        rest = text[m.end():]
        end = re.search(r"^#{2,3} ", rest, re.M)
        found[m.group(1)] = rest[:end.start()] if end else rest
    return found


SPECS = hookspec_functions()


def test_the_hookspecs_are_found():
    assert "advarena_register_attacks" in SPECS and "advarena_run_finished" in SPECS
    assert len(SPECS) >= 10


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_is_documented_with_its_signature(name):
    docs = sections()
    assert name in docs, f"hook {name} is missing from docs/plugins.md (add a '### `{name}`' " \
                         f"section)"
    section = docs[name]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, f"{name}: no python code block with its signature"
    expected = normalise(signature_line(name, SPECS[name]))
    documented = normalise(blocks[0].strip())
    assert documented == expected, (
        f"{name} is documented as\n  {documented}\nbut hookspecs.py says\n  {expected}")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_section_says_when_parameters_and_example(name):
    section = sections().get(name, "")
    assert "**When:**" in section, f"{name}: say when it is called ('**When:** ...')"
    assert "**Parameters:**" in section, f"{name}: list its parameters ('**Parameters:**')"
    assert "**Example:**" in section, f"{name}: give an example ('**Example:**')"
    params = list(inspect.signature(SPECS[name]).parameters)
    parameters_part = section.split("**Parameters:**", 1)[1].split("**Example:**", 1)[0]
    for p in params:
        assert f"`{p}`" in parameters_part, f"{name}: parameter '{p}' is not described"
    if not params:
        assert "none" in parameters_part.lower()
    examples = re.findall(r"```python\n(.*?)```", section.split("**Example:**", 1)[1], re.S)
    assert any(f"def {name}(" in e and "@hookimpl" in e for e in examples), \
        f"{name}: the example should implement the hook with @hookimpl"
    for e in examples:
        compile(e, f"<docs example of {name}>", "exec")


def test_no_documented_hook_is_unknown():
    unknown = sorted(set(sections()) - set(SPECS))
    assert not unknown, f"docs/plugins.md documents hooks that hookspecs.py lacks: {unknown}"


def test_versioning_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    assert "## Plugin API versioning" in text
    assert "api_version" in text and "skipped" in text


def test_signature_line_sees_a_changed_spec():
    """The comparison is sensitive: a renamed parameter or another annotation differs."""

    def advarena_cell_finished(cell: "Any", status: "str", secs: "float",  # noqa: F821
                               error: "str | None") -> "None":
        """A spec whose third parameter was renamed."""

    documented = sections()["advarena_cell_finished"]
    block = re.findall(r"```python\n(.*?)```", documented, re.S)[0]
    assert normalise(block.strip()) != normalise(signature_line("advarena_cell_finished",
                                                                advarena_cell_finished))
