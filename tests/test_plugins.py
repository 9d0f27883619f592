"""Plugin discovery (real entry points), the registry's refusals and defense composition."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys
import textwrap

import pluggy
import pytest

import advarena
from advarena.api import Attack, Composite, Defense
from advarena.errors import ParameterError, PluginError, UnknownPluginError
from advarena.hookimpl import hookimpl
from advarena.plugins import KINDS, Registry, default_registry, make_plugin_manager

# pyproject.toml: [project.entry-points.advarena] name -> module
FIRST_PARTY = {"advarena_attacks": "advarena_attacks", "advarena_defenses": "advarena_defenses",
               "advarena_zoo": "advarena_zoo", "advarena_protocols": "advarena.protocols"}
FIRST_PARTY_MODULES = set(FIRST_PARTY.values())


def normalise(name: str) -> str:
    """PEP 503 normalisation of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- first-party plugins through the installed entry points ---------------------------------


def test_first_party_plugins_come_from_installed_entry_points():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="advarena")}
    # The packaging declares the first-party plugins as entry points (pyproject.toml).
    assert eps.items() >= FIRST_PARTY.items()
    pm = make_plugin_manager()
    by_module = {plugin.__name__: dist for plugin, dist in pm.list_plugin_distinfo()}
    assert set(by_module) >= FIRST_PARTY_MODULES
    for module in FIRST_PARTY_MODULES:
        assert normalise(by_module[module].project_name) == "advarena"
        assert by_module[module].version == importlib.metadata.version("advarena")


def test_without_entry_points_nothing_is_registered():
    registry = Registry(make_plugin_manager(entry_points=False))
    assert all(registry.names(kind) == [] for kind in KINDS)


def test_registry_attributes_first_party_plugins_to_advarena():
    registry = Registry(make_plugin_manager())
    version = importlib.metadata.version("advarena")
    for kind in KINDS:
        entries = registry.entries(kind)
        # advarena publishes no ready-trained models of its own (the models hook is for zoos)
        assert entries or kind == "models", f"no first-party {kind}"
        for entry in entries:
            assert normalise(entry.distribution) == "advarena", entry
            assert entry.version == version
            assert entry.source in FIRST_PARTY  # the entry point's name
            assert entry.cls.distribution == entry.distribution
    assert {"fgsm", "pgd"} <= set(registry.names("attacks"))
    assert {"none", "brelu", "gda", "gda-brelu"} <= set(registry.names("defenses"))
    assert "digits" in registry.names("datasets")
    assert "cnn-001" in registry.names("architectures")


def test_describe_reports_distribution_and_threat_model():
    info = default_registry().entry("attacks", "fgsm").describe()
    assert info["name"] == "fgsm" and info["kind"] == "attacks"
    assert normalise(info["distribution"]) == "advarena"
    assert info["threat_model"]["norm"] == "linf"
    assert "eps" in {p["name"] for p in info["parameters"]}


# --- a third-party plugin through a real entry point ----------------------------------------

THIRD_PARTY_MODULE = "advarena_thirdparty_fixture"
THIRD_PARTY_SOURCE = '''
from advarena.api import Attack, ThreatModel
from advarena.hookimpl import hookimpl
from advarena.params import param


class ThirdPartyAttack(Attack):
    """An attack shipped by someone else."""

    name = "thirdparty-attack"
    threat_model = ThreatModel(norm="linf")
    eps: float = param(0.1, ge=0)

    def run(self, model, inputs, labels, eps, generator=None):
        return inputs.clone()


@hookimpl
def advarena_register_attacks():
    return [ThirdPartyAttack]
'''


@pytest.fixture
def third_party_dist(tmp_path, monkeypatch):
    (tmp_path / f"{THIRD_PARTY_MODULE}.py").write_text(THIRD_PARTY_SOURCE)
    info = tmp_path / f"{THIRD_PARTY_MODULE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: advarena-thirdparty-fixture\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[advarena]\nthirdparty = {THIRD_PARTY_MODULE}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.modules.pop(THIRD_PARTY_MODULE, None)
    importlib.invalidate_caches()


def test_third_party_plugin_is_discovered_and_attributed(third_party_dist):
    pm = make_plugin_manager()
    assert pm.has_plugin("thirdparty")
    dists = {plugin.__name__: dist for plugin, dist in pm.list_plugin_distinfo()}
    assert normalise(dists[THIRD_PARTY_MODULE].project_name) == "advarena-thirdparty-fixture"

    registry = Registry(pm)
    entry = registry.entry("attacks", "thirdparty-attack")
    assert normalise(entry.distribution) == "advarena-thirdparty-fixture"
    assert entry.version == "0.1"
    assert entry.source == "thirdparty"
    # First-party plugins keep their own attribution next to it.
    assert normalise(registry.entry("attacks", "fgsm").distribution) == "advarena"
    # It is usable like any other attack, and its description says where it came from.
    attack = registry.create("attacks", "thirdparty-attack", eps="0.2")
    assert attack.eps == 0.2
    assert registry.entry("attacks", "thirdparty-attack").describe()["version"] == "0.1"


def test_third_party_plugin_is_absent_without_its_distribution():
    assert "thirdparty-attack" not in Registry(make_plugin_manager()).names("attacks")


# --- refusals --------------------------------------------------------------------------------


def test_duplicate_name_names_both_plugins(fixture_plugin):
    dup = fixture_plugin("dup_plugin")
    with pytest.raises(PluginError) as info:
        Registry(make_plugin_manager([dup]))
    msg = str(info.value)
    assert "'fgsm'" in msg
    assert "FGSM" in msg and "ImpostorFGSM" in msg
    assert "advarena_attacks" in msg and dup.__name__ in msg


def test_duplicate_alias_is_refused(fixture_plugin):
    dup = fixture_plugin("dup_alias_plugin")
    with pytest.raises(PluginError) as info:
        Registry(make_plugin_manager([dup]))
    msg = str(info.value)
    assert "'gda-relu'" in msg and "GDA" in msg and "AliasSquatter" in msg


def test_unknown_attack_suggests_close_match():
    with pytest.raises(UnknownPluginError) as info:
        advarena.attack("pgdd")
    assert "'pgdd'" in str(info.value) and "'pgd'" in str(info.value)


def test_unknown_name_without_close_match_points_to_list():
    with pytest.raises(UnknownPluginError, match="advarena list attacks"):
        advarena.attack("zzzzzzzzzz")


def test_alias_resolves_to_canonical_plugin():
    registry = default_registry()
    assert registry.get("defenses", "gda-relu") is registry.get("defenses", "gda")
    assert registry.names("defenses").count("gda") == 1
    assert "gda-relu" not in registry.names("defenses")


class _ObjectPlugin:
    """A plugin object (not a module) whose registration hook returns ``classes``."""

    def __init__(self, classes, fail=False):
        self.classes = classes
        self.fail = fail

    @hookimpl
    def advarena_register_attacks(self):
        if self.fail:
            raise RuntimeError("boom in registration")
        return self.classes


class _NoName(Attack):
    pass


def test_registering_a_non_attack_is_refused():
    plugin = _ObjectPlugin([Defense])
    with pytest.raises(PluginError, match="not a subclass of advarena.api.Attack"):
        Registry(make_plugin_manager([plugin], entry_points=False))


def test_registering_a_nameless_class_is_refused():
    with pytest.raises(PluginError, match="_NoName without a name"):
        Registry(make_plugin_manager([_ObjectPlugin([_NoName])], entry_points=False))


def test_a_failing_registration_hook_names_the_plugin():
    pm = make_plugin_manager([_ObjectPlugin([], fail=True)], entry_points=False)
    (name,) = [pm.get_name(p) for p in pm.get_plugins()]
    with pytest.raises(PluginError, match=rf"plugin '{re.escape(name)}'.*boom in registration"):
        Registry(pm)


def test_old_api_version_is_skipped_with_a_warning(fixture_plugin):
    old = fixture_plugin("old_api_plugin")
    with pytest.warns(UserWarning, match="ancient-attack") as record:
        registry = Registry(make_plugin_manager([old]))
    assert any("API 0" in str(w.message) for w in record)
    assert "ancient-attack" not in registry.names("attacks")
    assert any("ancient-attack" in w for w in registry.warnings)
    # Same major, newer minor: accepted.
    assert "minor-bump-attack" in registry.names("attacks")
    assert not any("minor-bump-attack" in w for w in registry.warnings)
    # The rest of the installation is unaffected.
    assert "fgsm" in registry.names("attacks")


def test_typo_hook_name_is_caught_by_check_pending(fixture_plugin):
    typo = fixture_plugin("typo_hook_plugin")
    with pytest.raises(pluggy.PluginValidationError, match="advarena_register_attackz"):
        make_plugin_manager([typo])


# --- composition ----------------------------------------------------------------------------


def test_composition_builds_composite_of_the_parts():
    registry = default_registry()
    d = registry.create("defenses", "gda+brelu")
    assert isinstance(d, Composite)
    assert [p.name for p in d.parts()] == ["gda", "brelu"]
    assert d.name == "gda+brelu"
    assert d.parts() == [registry.create("defenses", "gda"), registry.create("defenses", "brelu")]
    # Same parts as the named first-party composition.
    assert d.parts() == advarena.defense("gda-brelu").parts()
    assert advarena.defense("gda+brelu") == d


def test_composition_parameters_are_grouped_by_part():
    d = default_registry().create("defenses", "gda + brelu", gda={"n": "2"}, brelu={"t": 0.5})
    gda, brelu = d.parts()
    assert (gda.n, brelu.t) == (2, 0.5)
    assert d.params() == {"gda": gda.params(), "brelu": brelu.params()}
    with pytest.raises(UnknownPluginError, match="grouped by part"):
        default_registry().create("defenses", "gda+brelu", n=2)
    with pytest.raises(ParameterError, match="brelu: parameter 't'"):
        default_registry().create("defenses", "gda+brelu", brelu={"t": -1})


def test_composition_chains_hooks_of_the_parts():
    from advarena.api import DatasetInfo

    info = DatasetInfo("digits", (1, 8, 8), 10)
    d = advarena.defense("gda+brelu", brelu={"t": 0.5})
    act = d.activation(info)
    assert act is not None and act().t == 0.5


def test_composition_of_unknown_part_suggests():
    with pytest.raises(UnknownPluginError, match="'brelu'"):
        advarena.defense("gda+brelux")


def test_two_activation_overrides_cannot_be_combined(fixture_plugin):
    registry = Registry(make_plugin_manager([fixture_plugin("extra_defenses")]))
    with pytest.raises(ParameterError) as info:
        registry.create("defenses", "brelu+tanh-act")
    msg = str(info.value)
    assert "brelu" in msg and "tanh-act" in msg and "'activation'" in msg
    # A named composition counts with its parts: gda-brelu already swaps the activation.
    with pytest.raises(ParameterError, match="'activation'"):
        registry.create("defenses", "gda-brelu+tanh-act")
    # A part without an activation of its own combines.
    ok = registry.create("defenses", "brelu+l2-logits")
    assert [p.name for p in ok.parts()] == ["brelu", "l2-logits"]


# --- nothing happens at import time ---------------------------------------------------------


def test_importing_builds_nothing():
    code = textwrap.dedent("""
        import sys
        import pluggy

        calls = []
        original = pluggy.PluginManager.load_setuptools_entrypoints

        def spy(self, *args, **kwargs):
            calls.append(args)
            return original(self, *args, **kwargs)

        pluggy.PluginManager.load_setuptools_entrypoints = spy

        import advarena
        import advarena.plugins
        import advarena.api, advarena.params, advarena.threat, advarena.models, advarena.hookspecs

        assert calls == [], calls
        assert advarena.plugins.default_registry.cache_info().currsize == 0
        for module in ("advarena_attacks", "advarena_defenses", "advarena_zoo"):
            assert module not in sys.modules, module

        advarena.attack("fgsm")
        assert len(calls) == 1, calls
        assert advarena.plugins.default_registry.cache_info().currsize == 1
        advarena.attack("pgd")
        advarena.defense("none")
        assert len(calls) == 1, "the default registry is built once per process"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
