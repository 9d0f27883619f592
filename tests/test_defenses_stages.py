"""The multi-stage and input-transform defenses (feature-squeezing, deepfool-at, rad, aec, iaec,
distillation) on ``digits`` with a fixed seed: each trains through a TrainingSession built as
``advarena.runner.run_train`` builds it, reaches a clean test accuracy within a documented margin
of ``none`` trained in the same setting, and has its method's property.

Margins (clean test accuracy, defense >= none - margin), each a tolerance for what the method
costs on 8x8 digits after a few epochs, not a measured number:

* feature-squeezing 0.15: 1-bit digits lose most of the 16 grey levels (Xu et al. and 001 report
  a small loss on MNIST, whose strokes are nearly binary; digits' are not);
* distillation 0.10: at T = 100 training converges slowly (the logits must grow T-fold), and the
  test gives teacher and student 12 epochs each;
* aec / iaec 0.15: the stacked autoencoder blurs clean inputs (003 Table 1: AEC's clean error
  4.5% against LeNet-5's 0.045%);
* rad 0.10, deepfool-at 0.05: they train longer than ``none`` on supersets of its data.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advarena
from advarena.device import seed_everything
from advarena.models import Classifier, InputTransform
from advarena.plugins import default_registry
from advarena.runner import split_validation
from advarena.threat import run_checked
from advarena.trainer import TrainConfig, TrainingSession

SEED = 0
CONFIG = TrainConfig(epochs=6, batch_size=64, lr=2e-3, val_fraction=0.1)
MARGIN = {"feature-squeezing": 0.15, "distillation": 0.10, "aec": 0.15, "iaec": 0.15,
          "rad": 0.10, "deepfool-at": 0.05}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: intra-op threads cost more than they save (and thrash on a loaded
    machine), so this module trains on one thread and restores the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits():
    return advarena.dataset("digits").load()


class Run:
    """What one training produced: the deployed classifier, the session, the defense and the
    arguments of every ``session.train`` call (model and defense of each stage)."""

    def __init__(self, model, session, defense, stages, seconds):
        self.model, self.session, self.defense = model, session, defense
        self.stages, self.seconds = stages, seconds


def train(splits, name: str, params: dict | None = None, *, reference=None,
          config: TrainConfig = CONFIG) -> Run:
    """Train ``name`` as ``advarena.runner.run_train`` does (same split, seeding, network,
    input transform and reference handling), recording each stage."""
    reg = default_registry()
    info = splits.info
    train_data, val = split_validation(splits.train, config.val_fraction, SEED)
    seed_everything(SEED)
    defense = reg.create("defenses", name, **(params or {}))
    net = reg.create("architectures", "cnn-001").build(info, defense.activation(info) or nn.ReLU)
    transform = defense.input_transform(info)
    if defense.needs_reference:
        assert reference is not None, f"{name} needs the reference model"
        net.load_state_dict(reference.net.state_dict())
    session = TrainingSession(net, info, train_data, val, config, defense,
                              device=torch.device("cpu"), seed=SEED,
                              reference=reference if defense.needs_reference else None,
                              transform=transform)
    stages = []
    real_train = session.train

    def recording_train(**kwargs):
        stages.append(dict(kwargs))
        real_train(**kwargs)
        stages[-1]["state_after"] = {k: v.clone() for k, v in session.model.state_dict().items()}

    session.train = recording_train
    start = time.perf_counter()
    defense.fit(session)
    seconds = time.perf_counter() - start
    model = Classifier(session.model, info.bounds, session.transform).eval()
    json.dumps(session.notes)  # the notes go into the stored result: JSON-ready
    return Run(model, session, defense, stages, seconds)


def accuracy(model, data) -> float:
    with torch.no_grad():
        return float((model(data.x).argmax(1) == data.y).float().mean())


@pytest.fixture(scope="module")
def reference(splits):
    run = train(splits, "none")
    return run.model, accuracy(run.model, splits.test)


def check_accuracy(name, run, splits, reference) -> float:
    acc = accuracy(run.model, splits.test)
    assert acc >= reference[1] - MARGIN[name], (
        f"{name}: clean accuracy {acc:.3f} more than {MARGIN[name]} below none's "
        f"{reference[1]:.3f}")
    return acc


def need_attack(name: str) -> None:
    if name not in default_registry().names("attacks"):
        pytest.skip(f"attack plugin '{name}' is not registered")


# -- feature squeezing --------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 3, 5])
@pytest.mark.parametrize("median", [0, 2, 3])
def test_squeezer_outputs_only_2_to_the_bits_levels(bits, median):
    from advarena_defenses.feature_squeezing import Squeezer

    sq = Squeezer(bits, median, (0.0, 1.0))
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(bits))
    out = sq(x)
    assert out.shape == x.shape
    levels = torch.linspace(0, 1, 2 ** bits)
    values = out.unique()
    assert len(values) <= 2 ** bits
    assert torch.isclose(values[:, None], levels[None, :], atol=1e-6).any(1).all()
    if median == 0:
        assert len(values) == 2 ** bits  # uniform noise reaches every level
    assert out.min() >= 0 and out.max() <= 1


def test_squeezer_respects_other_boxes_and_median_is_a_median():
    from advarena_defenses.feature_squeezing import Squeezer

    x = torch.rand(8, 1, 6, 6) * 2 - 1
    out = Squeezer(1, 0, (-1.0, 1.0))(x)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    # A lone bright pixel disappears under a 3x3 median filter.
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 2] = 1.0
    assert Squeezer(8, 3, (0.0, 1.0))(img).abs().max() == 0


def test_feature_squeezing_defaults_and_bpda():
    reg = default_registry()
    fs = reg.create("defenses", "feature-squeezing")
    mnist = advarena.api.DatasetInfo("m", (1, 8, 8), 10, family="mnist")
    cifar = advarena.api.DatasetInfo("c", (3, 8, 8), 10, family="cifar")
    assert fs.input_transform(mnist).bits == 1 and fs.input_transform(cifar).bits == 3
    t = fs.input_transform(mnist)
    assert isinstance(t, InputTransform) and t.differentiable is False
    assert list(t.parameters()) == [] and t.state_dict() == {}
    # BPDA: the classifier's input gradient passes the squeezer as the identity.
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    clf = Classifier(net, (0.0, 1.0), t)
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    clf(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_feature_squeezing_trains_on_squeezed_inputs(splits, reference):
    run = train(splits, "feature-squeezing")
    seen: list[torch.Tensor] = []
    handle = run.session.model.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        # The deployed classifier feeds the network 1-bit inputs only.
        run.model(splits.test.x[:32])
    finally:
        handle.remove()
    assert set(torch.cat([s.flatten() for s in seen]).unique().tolist()) <= {0.0, 1.0}
    assert len(run.stages) == 1 and isinstance(run.stages[0]["model"], Classifier)
    assert run.stages[0]["model"].transform is run.session.transform
    cost = run.session.cost()
    assert cost["forward_per_example"] == pytest.approx(1.0)
    assert cost["backward_per_example"] == pytest.approx(1.0)
    check_accuracy("feature-squeezing", run, splits, reference)


# -- distillation -------------------------------------------------------------------------------

def test_distillation_student_sees_temperature_soft_labels(splits, reference):
    from advarena.trainer import StepContext
    from advarena_defenses.distillation import DistillationStage, Tempered

    T = 100.0
    run = train(splits, "distillation", {"temperature": T, "teacher_epochs": 12,
                                         "student_epochs": 12})
    assert len(run.stages) == 2
    teacher_call, student_call = run.stages
    for call in run.stages:
        assert isinstance(call["defense"], DistillationStage)
        assert isinstance(call["model"], Tempered) and call["model"].temperature == T
    assert teacher_call["defense"].teacher is None  # the teacher trains on the labels
    teacher = student_call["defense"].teacher
    assert teacher is teacher_call["model"].net and teacher is not run.session.model
    assert student_call["model"].net is run.session.model  # the student is the session's net
    stage = student_call["defense"]
    data = run.session.data
    # The student's targets are softmax(teacher logits / T) of exactly its inputs, by row.
    teacher.eval()
    with torch.no_grad():
        expected = F.softmax(teacher(data.x) / T, dim=1)
    rows = torch.arange(len(data))
    ctx = StepContext(run.session, stage, 0, 0, rows=rows)
    targets = stage.batch_targets(data.y, ctx)
    torch.testing.assert_close(targets, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(targets.sum(1), torch.ones(len(rows)))
    # Soft, not one-hot: at T = 100 they are much flatter than the teacher's T = 1 outputs.
    with torch.no_grad():
        hard = F.softmax(teacher(data.x), dim=1)
    assert targets.max(1).values.mean() < hard.max(1).values.mean()
    # The student's loss is the cross-entropy against them at temperature T.
    student = run.session.model
    x, r = data.x[:16], rows[:16]
    with torch.no_grad():
        manual = -(expected[:16] * F.log_softmax(student(x) / T, 1)).sum(1).mean()
        got = stage.loss(student_call["model"], x, data.y[:16],
                         StepContext(run.session, stage, 0, 0, rows=r))
        assert float(got) == pytest.approx(float(manual), rel=1e-5)
    # Deployed at T = 1: the classifier returns the student's raw logits.
    with torch.no_grad():
        assert torch.equal(run.model(splits.test.x[:8]), student(splits.test.x[:8]))
    cost = run.session.cost()
    assert cost["stages"] == 2 and cost["epochs"] == 24
    check_accuracy("distillation", run, splits, reference)


def test_distillation_teacher_loss_is_at_temperature(splits):
    from advarena.trainer import StepContext
    from advarena_defenses.distillation import DistillationStage, Tempered

    logits = torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    plain = advarena.defense("none")
    session = TrainingSession(nn.Identity(), splits.info, splits.test, splits.test, CONFIG,
                              plain, device=torch.device("cpu"), seed=SEED)
    stage = DistillationStage(plain, session, 7.0)
    loss = stage.loss(Tempered(nn.Identity(), 7.0), logits, y,
                      StepContext(session, stage, 0, 0, rows=torch.arange(5)))
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits / 7.0, y)))


# -- distillation composed: the composition trains what its name says ---------------------------

TINY = TrainConfig(epochs=1, batch_size=64, lr=2e-3, val_fraction=0.1)


def tiny_fit(splits, name: str, params: dict | None = None, *, reference=None):
    """``name`` on 300 digits, the small ``mlp-toy``, 1 epoch per stage: as ``run_train``
    builds a session (the stage-recording ``train`` above, a smaller network)."""
    reg = default_registry()
    info = splits.info
    data, val = split_validation(splits.train.subset(slice(0, 300)), 0.1, SEED)
    with torch.random.fork_rng(devices=[]):
        seed_everything(SEED)
        defense = reg.create("defenses", name, **(params or {}))
        net = reg.create("architectures", "mlp-toy").build(
            info, defense.activation(info) or nn.ReLU)
        if reference is not None:
            net.load_state_dict(reference.state_dict())
        session = TrainingSession(net, info, data, val, TINY, defense,
                                  device=torch.device("cpu"), seed=SEED, reference=reference,
                                  transform=defense.input_transform(info))
        defense.fit(session)
    return session


@pytest.fixture(scope="module")
def plain_distillation(splits):
    return tiny_fit(splits, "distillation", {"temperature": 10.0})


def test_gda_plus_distillation_trains_both_stages_on_the_copies(splits, plain_distillation):
    plain = plain_distillation.cost()
    combo = tiny_fit(splits, "gda+distillation", {"gda": {"n": 10},
                                                   "distillation": {"temperature": 10.0}})
    cost = combo.cost()
    assert plain["data_copies"] == pytest.approx(1)
    assert cost["data_copies"] == pytest.approx(11)  # teacher and student on 11 copies
    # the teacher labels every input the student trains on: 11 copies' forwards
    assert combo.one_off["soft_labels"]["forward_examples"] == 11 * len(combo.data)


def test_vat_plus_distillation_has_vat_passes_in_both_stages(splits, plain_distillation):
    plain = plain_distillation.cost()
    combo = tiny_fit(splits, "vat+distillation", {"distillation": {"temperature": 10.0}})
    cost = combo.cost()
    vat = tiny_fit(splits, "vat").cost()
    assert plain["forward_per_example"] < cost["forward_per_example"]
    # per trained example, each stage costs what VAT costs (plus the soft labels' forwards)
    extra = combo.one_off["soft_labels"]["forward_examples"] / combo.trained_examples
    assert cost["forward_per_example"] == pytest.approx(vat["forward_per_example"] + extra)
    assert cost["backward_per_example"] == pytest.approx(vat["backward_per_example"])


def test_distillation_plus_parseval_retracts_the_student(splits, plain_distillation):
    from advarena_defenses.parseval import parseval_deviation, parseval_layers

    combo = tiny_fit(splits, "distillation+parseval", {"distillation": {"temperature": 10.0},
                                                       "parseval": {"beta": 5e-2}})
    plain = plain_distillation
    pairs = list(zip(parseval_layers(combo.model), parseval_layers(plain.model)))
    assert any(not torch.equal(a.weight, b.weight) for a, b in pairs)
    for a, b in pairs:
        w = a.weight.flatten(1)
        if w.shape[0] <= w.shape[1]:
            assert parseval_deviation(a) < parseval_deviation(b)


def test_label_smoothing_plus_distillation_smooths_the_teachers_labels(splits,
                                                                      plain_distillation):
    from advarena.trainer import StepContext
    from advarena_defenses.distillation import DistillationStage

    combo = advarena.defense("label-smoothing+distillation",
                             **{"label-smoothing": {"weight": 0.75}})
    teacher_stage = DistillationStage(combo, None, 10.0)
    y = torch.tensor([0, 3])
    ctx = StepContext(plain_distillation, teacher_stage, 0, 0, rows=torch.arange(2))
    t = teacher_stage.batch_targets(y, ctx)
    assert t is not None and float(t[0, 0]) == pytest.approx(0.75)
    session = tiny_fit(splits, "label-smoothing+distillation",
                       {"label-smoothing": {"weight": 0.75},
                        "distillation": {"temperature": 10.0}})
    assert any(not torch.equal(a, b) for a, b in zip(session.model.state_dict().values(),
                                                     plain_distillation.model.state_dict()
                                                     .values()))


@pytest.mark.parametrize("other", ["rad", "aec", "feature-squeezing"])
def test_distillation_with_another_multi_stage_defense_is_refused(other):
    from advarena.errors import ParameterError

    with pytest.raises(ParameterError, match="fit"):
        advarena.defense(f"{other}+distillation")


@pytest.mark.parametrize("other", ["deep-defense", "parseval"])
def test_a_fine_tuning_schedule_with_distillations_stages_is_refused(other):
    """Distillation trains teacher and student by its own stages: a part that fine-tunes from
    the reference by 002's schedule would not be followed, so the composition is refused at
    construction; parseval without ``finetune`` composes."""
    from advarena.errors import ParameterError

    params = {"parseval": {"finetune": True}} if other == "parseval" else {}
    with pytest.raises(ParameterError, match="schedule"):
        advarena.defense(f"{other}+distillation", **params)
    advarena.defense("parseval+distillation")


def test_gda_plus_aec_and_deepfool_at_keep_the_composed_hooks(splits):
    """The other multi-stage defenses train their classifier stages through the composition:
    ``gda+aec``'s classifier stage on 11 copies, ``gda+deepfool-at``'s fine-tuning on the
    11 copies of (clean + DeepFool) data."""
    need_attack("deepfool")
    ref = tiny_fit(splits, "none").model
    dfat = tiny_fit(splits, "gda+deepfool-at", {"gda": {"n": 10},
                                                "deepfool-at": {"epochs": 1, "max_iter": 5}},
                    reference=ref)
    assert dfat.cost()["data_copies"] == pytest.approx(22)
    aec = tiny_fit(splits, "gda+aec", {"gda": {"n": 10},
                                       "aec": {"attack": "fgsm", "ae_epochs": 1}})
    assert aec.cost()["stages"] == 2
    # stage 0 (classifier) on 11 copies, stage 1 (autoencoder) on 2 (adversarial + clean)
    assert aec.trained_examples == 11 * len(aec.data) + 2 * len(aec.data)


# -- RAD ----------------------------------------------------------------------------------------

def test_rad_stops_when_none_evade(splits):
    run = train(splits, "rad", {"attack": "fgsm", "eps": 0.0, "rounds": 3})
    # FGSM with eps = 0 returns the inputs: no correctly classified point can evade.
    assert run.defense.added == [0]
    assert run.session.notes["rad_added"] == [0]
    assert run.session.notes["rad_converged"] is True
    assert len(run.stages) == 1  # no retraining


def test_rad_records_rounds_and_stops_at_the_limit(splits, reference):
    rounds = 2
    run = train(splits, "rad", {"attack": "fgsm", "eps": 0.3, "rounds": rounds,
                                "retrain_epochs": 2})
    added = run.session.notes["rad_added"]
    assert added == run.defense.added
    assert 1 <= len(added) <= rounds
    assert all(isinstance(n, int) and n >= 0 for n in added)
    assert added[0] > 0  # FGSM at 0.3 fools a plainly trained digits model on some points
    if len(added) < rounds:
        assert added[-1] == 0 and run.session.notes["rad_converged"]
    else:
        assert run.session.notes["rad_converged"] == (added[-1] == 0)
    retrains = [n for n in added if n > 0]
    assert len(run.stages) == 1 + len(retrains)
    # Retraining stages train on the originals plus every example added so far, so the data
    # share over all stages exceeds one copy; the crafting counts in the cost record.
    cost = run.session.cost()
    assert cost["data_copies"] > 1
    assert cost["one_off"]["crafting"]["forward_examples"] > 0
    assert run.session.notes["crafting"]["attack"] == "fgsm"
    check_accuracy("rad", run, splits, reference)


@pytest.mark.parametrize("attack", ["coordinate-greedy", "adam-evasion"])
def test_rad_with_minimal_attacks(splits, attack):
    need_attack(attack)
    run = train(splits, "rad", {"attack": attack, "rounds": 1, "retrain_epochs": 1,
                                "max_examples": 40},
                config=TrainConfig(epochs=2, batch_size=64, lr=2e-3))
    added = run.session.notes["rad_added"]
    assert len(added) == 1 and 0 <= added[0] <= 40
    assert run.session.notes["crafting"]["examples"] <= 40
    assert len(run.stages) == 1 + (added[0] > 0)


def test_rad_default_attack_is_adam():
    assert default_registry().create("defenses", "rad").attack == "adam-evasion"


# -- AEC and IAEC -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["aec", "iaec"])
def test_autoencoder_undoes_the_attack_it_was_trained_on(splits, reference, name):
    from advarena_defenses.aec import Autoencoder, AutoencoderStage, StackedTraining

    eps = 0.3
    run = train(splits, name, {"attack": "fgsm", "eps": eps, "ae_epochs": 8})
    ae = run.session.transform
    assert isinstance(ae, Autoencoder) and ae.differentiable
    assert run.model.transform is ae
    assert [m.out_features for m in ae.layers if isinstance(m, nn.Linear)] == [256, 128, 256, 64]
    # Stage 1 trains the classifier; stage 2 the autoencoder with the classifier frozen.
    assert len(run.stages) == 2
    clf_stage, ae_stage = run.stages
    assert isinstance(ae_stage["model"], StackedTraining)
    assert isinstance(ae_stage["defense"], AutoencoderStage)
    assert ae_stage["defense"].ce_weight == (1.0 if name == "iaec" else 0.0)
    for k, v in clf_stage["state_after"].items():
        assert torch.equal(v, run.session.model.state_dict()[k]), f"classifier changed: {k}"
    # Its training pairs: adversarial -> clean and clean -> clean.
    x_adv, x_clean = run.defense.pairs
    assert ae_stage["data"].x.shape[0] == 2 * len(x_clean)
    # On fresh adversarial examples of the same attack (test set, against the classifier it
    # was trained for), the autoencoder lands closer to the clean input than its input did.
    clf = Classifier(run.session.model, splits.info.bounds).eval()
    x, y = splits.test.x, splits.test.y
    adv = run_checked(advarena.attack("fgsm"), clf, x, y, eps=eps)
    with torch.no_grad():
        recon = ae(adv)
    before = (adv - x).flatten(1).norm(dim=1).mean()
    after = (recon - x).flatten(1).norm(dim=1).mean()
    assert after < before, f"{name}: reconstruction {after:.3f} not below identity {before:.3f}"
    assert recon.min() >= 0 and recon.max() <= 1
    # White-box attacks differentiate through the whole stack (no BPDA).
    xg = x[:4].clone().requires_grad_(True)
    run.model(xg).sum().backward()
    assert xg.grad.abs().sum() > 0
    check_accuracy(name, run, splits, reference)


@pytest.mark.parametrize("name", ["aec", "iaec"])
def test_autoencoder_with_the_default_attack_restores_the_label(splits, name):
    """With 003's default attack (adam evasion, minimal), the examples crafted against the bare
    classifier sit just across its boundary; the stack must classify most of them correctly
    (the bare classifier gets none of them right, by construction of a minimal attack)."""
    need_attack("adam-evasion")
    run = train(splits, name, {"ae_epochs": 6}, config=TrainConfig(epochs=6, batch_size=64,
                                                                    lr=2e-3))
    assert run.session.notes["crafting"]["attack"] == "adam-evasion"
    bare = Classifier(run.session.model, splits.info.bounds).eval()
    x, y = splits.test.x, splits.test.y
    adv = run_checked(advarena.attack("adam-evasion"), bare, x, y)
    fooled = (adv - x).flatten(1).norm(dim=1) > 0
    assert fooled.sum() > 0
    with torch.no_grad():
        assert (bare(adv[fooled]).argmax(1) != y[fooled]).all()
        restored = (run.model(adv[fooled]).argmax(1) == y[fooled]).float().mean()
    assert restored > 0.5, f"{name}: the stack restores only {restored:.2f} of the labels"


def test_iaec_loss_adds_cross_entropy_of_the_frozen_classifier():
    from advarena_defenses.aec import Autoencoder, AutoencoderStage, StackedTraining

    torch.manual_seed(0)
    ae = Autoencoder((1, 4, 4), (8,), (0.0, 1.0))
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    stacked = StackedTraining(ae, net).train()
    assert [id(p) for p in stacked.parameters()] == [id(p) for p in ae.parameters()]
    x = torch.rand(6, 1, 4, 4)
    clean = torch.rand(6, 1, 4, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    rows = torch.arange(6)
    rec = AutoencoderStage(clean, labels, 0.0).loss(stacked, x, rows, None)
    full = AutoencoderStage(clean, labels, 2.0).loss(stacked, x, rows, None)
    with torch.no_grad():
        out = ae(x)
        expect_rec = (out - clean).flatten(1).norm(dim=1).mean()
        expect_ce = F.cross_entropy(net(out), labels)
    assert float(rec.detach()) == pytest.approx(float(expect_rec), rel=1e-5)
    assert float(full.detach()) == pytest.approx(float(expect_rec + 2.0 * expect_ce), rel=1e-5)
    # Eval mode: the stacked classifier's logits (what the trainer validates).
    stacked.eval()
    assert stacked(x).shape == (6, 3)


def test_autoencoder_is_sized_to_the_input():
    reg = default_registry()
    aec = reg.create("defenses", "aec")
    mnist = advarena.api.DatasetInfo("m", (1, 28, 28), 10)
    cifar = advarena.api.DatasetInfo("c", (3, 32, 32), 10, family="cifar")
    dims = lambda t: [(m.in_features, m.out_features) for m in t.layers if isinstance(m, nn.Linear)]
    assert dims(aec.input_transform(mnist)) == [(784, 256), (256, 128), (128, 256), (256, 784)]
    assert dims(aec.input_transform(cifar))[0] == (3072, 256)
    assert aec.attack == "adam-evasion"


# -- DeepFool adversarial training --------------------------------------------------------------

def test_deepfool_at_fine_tunes_on_deepfool_examples_of_the_reference(splits, reference):
    need_attack("deepfool")
    ref_model = reference[0]
    m = 300
    run = train(splits, "deepfool-at", {"max_examples": m, "epochs": 3}, reference=ref_model)
    session = run.session
    assert session.reference is ref_model
    adv = run.defense.adversarial
    clean = run.defense.clean
    assert len(adv) == len(clean) == m
    assert torch.equal(adv.y, clean.y)
    # Exactly the deepfool plugin's output on the reference model (same batch, same settings).
    attack = advarena.attack("deepfool", max_iter=50, overshoot=0.02)
    again = run_checked(attack, ref_model, clean.x[:256], clean.y[:256], seed=None)
    torch.testing.assert_close(adv.x[:256], again, rtol=0, atol=1e-6)
    # DeepFool's contract: every perturbed example fools the reference.
    moved = (adv.x - clean.x).flatten(1).norm(dim=1) > 0
    assert moved.float().mean() > 0.5
    with torch.no_grad():
        assert (ref_model(adv.x[moved]).argmax(1) != adv.y[moved]).all()
    # Fine-tuning: 2 epochs at 002's 5e-4, the last at half (002's cut), on clean + adversarial.
    assert [s["epochs"] for s in run.stages] == [2, 1]
    assert run.stages[1]["lr"] == pytest.approx(run.stages[0]["lr"] / 2)
    assert run.stages[0]["lr"] == pytest.approx(5e-4)
    n = len(session.data)
    assert session.cost()["data_copies"] == pytest.approx((n + m) / n)
    # Crafting on the reference is measured: DeepFool's passes count in the cost record.
    assert session.cost()["one_off"]["crafting"]["backward_examples"] >= m
    check_accuracy("deepfool-at", run, splits, reference)


# -- 002's fine-tuning protocol -----------------------------------------------------------------

def test_002_defenses_fine_tune_from_the_reference_by_one_schedule(splits):
    """002 sec. 4 and supplement Table 3: Deep Defense, Adv. Train I and Parseval are fine-tuned
    from the same reference under identical policies (MNIST: 5 epochs at 5e-4, halved after
    four; CIFAR-10: 50 epochs, halved for the last 10)."""
    from types import SimpleNamespace

    names = [("deep-defense", {}), ("deepfool-at", {}), ("parseval", {"finetune": True})]
    defenses = [advarena.defense(n, **p) for n, p in names]
    assert all(d.needs_reference for d in defenses)
    assert not advarena.defense("parseval").needs_reference  # Cisse et al.: from scratch
    sgd = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 100}
    mnist = [{"epochs": 4, "lr": 5e-4, **sgd}, {"epochs": 1, "lr": 2.5e-4, **sgd}]
    cifar = [{"epochs": 40, "lr": 5e-4, **sgd}, {"epochs": 10, "lr": 2.5e-4, **sgd}]
    for family, expected in (("mnist", mnist), ("cifar", cifar)):
        info = SimpleNamespace(family=family)
        assert [d.schedule(info, CONFIG) for d in defenses] == [expected] * 3
    # A composition of two of them follows the one schedule; different ones are refused.
    info = SimpleNamespace(family="mnist")
    assert advarena.defense("deep-defense+parseval", parseval={"finetune": True}).schedule(
        info, CONFIG) == mnist
    # optimizer="suite": the suite's optimizer and batch size
    assert advarena.defense("deep-defense", optimizer="suite").schedule(info, CONFIG) == [
        {"epochs": 4, "lr": 5e-4}, {"epochs": 1, "lr": 2.5e-4}]
    from advarena.errors import ParameterError

    with pytest.raises(ParameterError, match="schedules"):
        advarena.defense("deep-defense+parseval",
                         parseval={"finetune": True, "epochs": 2}).schedule(info, CONFIG)

    # Parseval with finetune trains the reference's weights by the schedule, not from scratch.
    ref = tiny_fit(splits, "none").model
    calls, starts = [], []
    real = TrainingSession.train

    def recording(self, **kw):
        calls.append((kw.get("epochs"), kw.get("lr")))
        starts.append(all(torch.equal(a, b) for a, b in zip(self.model.state_dict().values(),
                                                            ref.state_dict().values())))
        return real(self, **kw)

    TrainingSession.train = recording
    try:
        tiny_fit(splits, "parseval", {"finetune": True, "epochs": 2, "cut_epochs": 1},
                 reference=ref)
        assert calls == [(1, 5e-4), (1, 2.5e-4)] and starts[0]  # from the reference
        calls.clear(), starts.clear()
        tiny_fit(splits, "parseval")
        assert calls == [(None, None)] and not starts[0]  # from scratch, the suite's settings
    finally:
        TrainingSession.train = real
