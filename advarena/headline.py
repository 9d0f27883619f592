"""The headline: one worst case over every bounded attack at the headline eps (issue 11).

Per example, a model counts as robust only if it classifies the clean input correctly and
survives *every* bounded attack that was evaluated at the headline eps under that threat model
(norm): the white-box gradient attacks (each with its own loss: cross-entropy, margin, DLR), the
score-based attacks (no gradients, e.g. Square), and the black-box transfer attacks crafted on
substitutes. A defense that hides its gradients blinds the first group only, so the headline
cannot reward masking (Carlini et al. 2019, sec. 4.4 and 5.2; Croce and Hein 2020, whose
AutoAttack reports the same per-example worst case over diverse attacks).

Every example of every protocol is the same example (the fixed evaluation permutation), so the
per-example outcome bits of the protocols' records can be combined by AND.

Records (protocol ``headline``, attack ``worst-case``, eps the headline eps, ``norm`` in extra):

* ``headline_accuracy``: the worst case over all of them, marked ``headline`` (the leaderboard
  ranks by it); its extra names the attacks and protocols behind it (``attacks``,
  ``protocols``), the cells it was computed from (``sources``) and what was missing.
* ``white_box_only_accuracy``, ``score_only_accuracy``, ``transfer_only_accuracy``: the worst
  case within each group alone, for the columns beside the headline (a group that was not
  evaluated has no record).

Choices: only records at exactly the headline eps enter (an attack at another eps bounds
another threat model); transfer records enter where their source attack has the table's norm;
the score-based group is the white-box protocol's attacks whose threat model declares
``access = "score"``, the white-box group the ``gradient`` ones.
"""

from __future__ import annotations

from typing import Any

import torch

from .api.records import Measurement
from .evaluation import accuracy_measurement, record_outcomes

GROUPS = (("white-box", "white_box_only_accuracy"), ("score", "score_only_accuracy"),
          ("transfer", "transfer_only_accuracy"))


class HeadlineError(ValueError):
    """The protocols' records cannot be combined (different examples)."""


def _bits(r: dict[str, Any]) -> torch.Tensor:
    bits = record_outcomes(r)
    if bits is None:
        raise HeadlineError(f"{r['protocol']} record {r['metric']} ({r.get('attack')}) has no "
                            f"per-example outcomes consistent with its value")
    return torch.tensor(bits, dtype=torch.bool)


def compute_headline(records: list[dict[str, Any]], attacks: dict[str, dict[str, str]],
                     sources: dict[str, str] | None = None) -> list[Measurement]:
    """The headline records of one model from its white-box and black-box records.

    ``attacks``: per attack name its threat model (``{"norm": ..., "access": ...}``), as the
    plan recorded it. Returns nothing when the white-box protocol has no headline record."""
    heads = [r for r in records if r["protocol"] == "white-box"
             and r["metric"] == "worst_case_accuracy" and (r["extra"] or {}).get("headline")]
    clean_rec = next((r for r in records if r["protocol"] == "white-box"
                      and r["metric"] == "accuracy"), None)
    if not heads or clean_rec is None:
        return []
    clean = _bits(clean_rec)
    out: list[Measurement] = []
    for head in heads:
        eps, norm = head["eps"], (head["extra"] or {}).get("norm", "linf")
        members: dict[str, list[tuple[str, torch.Tensor]]] = {g: [] for g, _ in GROUPS}
        for r in records:
            if r["eps"] is None or abs(r["eps"] - eps) > 1e-12:
                continue
            if r["protocol"] == "white-box" and r["metric"] == "robust_accuracy":
                tm = attacks.get(r["attack"], {})
                if tm.get("norm", (r["extra"] or {}).get("norm")) != norm:
                    continue
                group = "score" if tm.get("access") == "score" else "white-box"
                members[group].append((r["attack"], _bits(r)))
            elif r["protocol"] == "black-box" and r["metric"] == "transfer_accuracy":
                source = (r["extra"] or {}).get("source_attack") or str(r["attack"]).split("@")[0]
                if attacks.get(source, {}).get("norm", "linf") == norm:
                    members["transfer"].append((f"{r['attack']}", _bits(r)))
        n = len(clean)
        for group, items in members.items():
            for name, bits in items:
                if len(bits) != n:
                    raise HeadlineError(f"{group} attack {name} scored {len(bits)} examples, "
                                        f"the clean accuracy {n}: not the same examples")
        worst = clean.clone()
        common = {"norm": norm}
        for group, metric in GROUPS:
            if not members[group]:
                continue
            mask = clean.clone()
            for _, bits in members[group]:
                mask &= bits
            worst &= mask
            out.append(accuracy_measurement(metric, mask, attack="worst-case", eps=eps,
                                            attacks=[a for a, _ in members[group]], **common))
        missing = [g for g, _ in GROUPS if not members[g]]
        out.append(accuracy_measurement(
            "headline_accuracy", worst, attack="worst-case", eps=eps, headline=True,
            attacks={g: [a for a, _ in members[g]] for g, _ in GROUPS},
            protocols=sorted({"white-box"} | ({"black-box"} if members["transfer"] else set())),
            missing=missing, sources=dict(sorted((sources or {}).items())), **common))
    return out
