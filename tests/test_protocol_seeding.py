"""Shared models of the ensemble-transfer protocol: independent replicates across run seeds,
and no member trained that no ensemble uses (000 sec. V-C: six models, ensembles of 1, 3, 5)."""

from __future__ import annotations

import advarena


def member_seeds(proto, seed: int) -> dict[str, int]:
    models = proto.shared_models({"seed": seed, "architecture": "cnn-001"})
    return {role: spec["seed"] for role, spec in models.items()}


def test_members_of_different_run_seeds_are_disjoint():
    proto = advarena.protocol("ensemble-transfer")
    pools = [set(member_seeds(proto, s).values()) for s in range(4)]
    for i in range(len(pools)):
        for j in range(i + 1, len(pools)):
            assert not pools[i] & pools[j], (i, j, pools[i] & pools[j])
    # apart from the defended models (run seeds) and the substitutes (run seed + 1000)
    assert all(s >= 2000 for pool in pools for s in pool)


def test_only_the_members_an_ensemble_uses_are_trained():
    proto = advarena.protocol("ensemble-transfer", members=6, sizes=(1, 3, 5))
    seeds = member_seeds(proto, 0)
    assert sorted(seeds) == [f"member-cnn-001-{k}" for k in range(5)]
    assert len(set(seeds.values())) == 5
