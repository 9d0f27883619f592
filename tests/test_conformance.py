"""Every first-party plugin passes advarena.testing's conformance checks, table-driven from the
installed registry (a new first-party plugin is checked without touching this file).

Parameters that only make a check faster (fewer steps) are listed per plugin below; every other
plugin is checked with its paper defaults. Third-party plugins installed beside advarena are
left to their own tests.
"""

from __future__ import annotations

import re

import pytest
import torch

from advarena.plugins import default_registry
from advarena.testing import (check_architecture, check_attack, check_dataset, check_defense)

# Small settings for speed only (the checks are about contracts, not strength).
ATTACK_PARAMS: dict[str, dict] = {
    "adam-evasion": {"steps": 10},
    "apgd-ce": {"steps": 5},
    "coordinate-greedy": {"steps": 10},
    "cw-l2": {"steps": 5, "binary_search_steps": 2},
    "deepfool": {"max_iter": 10},
    "fgsm-minimal": {"eps_step": 0.05},
    "mi-fgsm": {"steps": 3},
    "pgd": {"steps": 3},
}
DEFENSE_PARAMS: dict[str, dict] = {
    "aec": {"attack": "fgsm", "max_examples": 64},
    "iaec": {"attack": "fgsm", "max_examples": 64},
    "rad": {"attack": "fgsm", "rounds": 2, "max_examples": 64},
    "deepfool-at": {"max_iter": 5, "max_examples": 64},
    "deep-defense": {"steps": 2},
    "gda": {"n": 1},
    "gda-brelu": {"n": 1},
    "ifgsm-at": {"steps": 2},
    "pgd-at": {"steps": 2},
}
DATASET_PARAMS: dict[str, dict] = {}
ARCHITECTURE_PARAMS: dict[str, dict] = {}


def first_party(kind: str) -> list:
    """The registry's entries of ``kind`` that the advarena distribution itself provides."""
    return [e for e in default_registry().entries(kind)
            if re.sub(r"[-_.]+", "-", e.distribution).lower() == "advarena"]


def table(kind: str, params: dict[str, dict]) -> list:
    return [pytest.param(e.cls, params.get(e.name, {}), id=e.name) for e in first_party(kind)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest, and fair to a loaded CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cls,params", table("attacks", ATTACK_PARAMS))
def test_attack_conforms(cls, params):
    check_attack(cls, params)


@pytest.mark.parametrize("cls,params", table("defenses", DEFENSE_PARAMS))
def test_defense_conforms(cls, params):
    check_defense(cls, params)


@pytest.mark.parametrize("cls,params", table("datasets", DATASET_PARAMS))
def test_dataset_conforms(cls, params):
    check_dataset(cls, params)


@pytest.mark.parametrize("cls,params", table("architectures", ARCHITECTURE_PARAMS))
def test_architecture_conforms(cls, params):
    check_architecture(cls, params)


def test_the_speed_settings_name_registered_plugins():
    for kind, params in (("attacks", ATTACK_PARAMS), ("defenses", DEFENSE_PARAMS),
                         ("datasets", DATASET_PARAMS), ("architectures", ARCHITECTURE_PARAMS)):
        names = {e.name for e in first_party(kind)}
        assert names, f"no first-party {kind}"
        stale = sorted(set(params) - names)
        assert not stale, f"settings for {kind} that are not registered: {stale}"
