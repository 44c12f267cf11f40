"""Explanations of multi-label models: every method explains an attribute's logit, on the multi-task ABN (through
its attribute view) and on a multi-label ABN with one map; the multi-task map as a method; the metrics of attributes
(energy on the other objects, σ(logit) faithfulness); abn-explain on a multi-label checkpoint; the bad inputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from abn.data import SHAPE_NAMES
from abn.data.multishapes import generate_multishapes_split
from abn.explain import METHODS, applicable_methods, explain, normalize_maps
from abn.explain.layers import AttributeView
from abn.explain.metrics import AverageDropIncrease, DeletionAUC, OtherObjectsEnergy
from abn.explain.relevance import layer_relevance
from abn.explain.run import choose_attributes, run_explain
from abn.models import create_model
from abn.train import train
from tests.conftest import compose_train_config

T = 4
LAYER_METHODS = ("cam", "gradcam", "gradcam++", "counterfactual", "relevance_cam")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: on busy cores, torch's thread pool waits for a time slice at every operation (measured 10 to 50
    times slower with 2 threads on 2 loaded cores), so the tests of this file run on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(head: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", head=head, num_classes=T, **options).eval()


@pytest.fixture(scope="module")
def multitask():
    return tiny("multitask", task_chunk=3)  # chunks of 3 attributes: the last stage runs twice per forward


@pytest.fixture(scope="module")
def abn_multilabel():
    return tiny("abn")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


TARGETS = torch.tensor([1, 3])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("head", ["multitask", "abn"])
def test_every_method_explains_an_attribute(head, method, multitask, abn_multilabel, images):
    net = multitask if head == "multitask" else abn_multilabel
    if head == "multitask" and method == "abn_class":  # its maps are one per attribute already: method abn
        assert method not in applicable_methods(net)
        return
    assert method in applicable_methods(net)  # cam too: the multi-task heads are linear on pooled features
    maps = explain(net, images, method, targets=TARGETS, multilabel=True)
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    raw = explain(net, images, method, targets=TARGETS, multilabel=True, raw=True)
    if method in ("guided_backprop", "guided_gradcam"):
        assert raw.shape == images.shape
    elif method == "abn":
        assert raw.shape == (2, 16, 16)
    elif method in LAYER_METHODS:
        assert raw.shape == (2, 8, 8)  # the attribute's own last-stage features, one map per image


def test_the_view_runs_each_images_attribute_path_and_gives_the_networks_logits(multitask, images):
    with torch.no_grad():
        out = multitask(images)
        seen = []
        handle = multitask.last_stage.register_forward_hook(lambda module, inputs, output: seen.append(len(output)))
        view = AttributeView(multitask, TARGETS)(images)
        handle.remove()
    rows = torch.arange(2)
    torch.testing.assert_close(view.logits[:, 0], out.logits[rows, TARGETS], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(view.att_logits[:, 0], out.att_logits[rows, TARGETS])
    torch.testing.assert_close(view.attention[:, 0], out.attention[rows, TARGETS])
    assert seen == [2]  # B images through the last stage, not B·T


@pytest.mark.parametrize("options", [{"task_head": "two_way"}, {"task_head": "one_logit", "attention_mode": "residual"}])
def test_the_view_follows_the_head_options(options, images):
    net = tiny("multitask", **options)
    with torch.no_grad():
        expected = net(images).logits[torch.arange(2), TARGETS]
        torch.testing.assert_close(AttributeView(net, TARGETS)(images).logits[:, 0], expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(AttributeView(net, 2)(images).logits[:, 0], net(images).logits[:, 2], rtol=1e-4,
                                   atol=1e-5)  # one attribute for every image


def test_the_abn_method_gives_map_t_for_target_t(multitask, images):
    with torch.no_grad():
        out = multitask(images)
    assert out.attention.min() < 0  # raw maps (no sigmoid): negative values occur
    for t in range(T):
        raw = explain(multitask, images, "abn", targets=t, raw=True)
        torch.testing.assert_close(raw, out.attention[:, t])
        maps = explain(multitask, images, "abn", targets=t, interpolation="nearest")
        expected = normalize_maps(out.attention[:, t].repeat_interleave(2, 1).repeat_interleave(2, 2))
        torch.testing.assert_close(maps, expected)  # min-max per map: the most negative value becomes 0
        assert maps.amin(dim=(1, 2)).eq(0).all() and maps.amax(dim=(1, 2)).eq(1).all()
    predicted = out.logits.argmax(dim=1)  # no targets: the attribute with the highest logit
    torch.testing.assert_close(explain(multitask, images, "abn", raw=True), out.attention[torch.arange(2), predicted])


def test_the_abn_head_keeps_its_one_map(abn_multilabel, images):
    with torch.no_grad():
        expected = abn_multilabel(images).attention[:, 0]
    for t in (0, 3):
        torch.testing.assert_close(explain(abn_multilabel, images, "abn", targets=t, raw=True), expected)


@pytest.mark.parametrize("task_head", ["two_way", "one_logit"])
def test_cam_of_an_attribute_averages_to_its_logit(task_head, images):
    net = tiny("multitask", task_head=task_head)
    cams = explain(net, images, "cam", targets=TARGETS, raw=True)
    with torch.no_grad():
        logits = net(images).logits[torch.arange(2), TARGETS]
    torch.testing.assert_close(cams.mean(dim=(1, 2)), logits, rtol=1e-4, atol=1e-5)


def head_weight(net: torch.nn.Module) -> torch.Tensor:
    """The attribute heads' weights: T×O×C (multi-task) or T×C (the linear layer of the abn and cam heads)."""
    return net.head.weight if net.head_name == "multitask" else net.head.fc.weight


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "counterfactual", "relevance_cam", "cam", "guided_gradcam"])
@pytest.mark.parametrize("head", ["multitask", "abn", "cam"])
def test_the_score_explained_is_the_attributes_logit(head, method, images):
    """Changing the head weights of another attribute leaves attribute t's map as it is; changing t's changes it."""
    net, t = tiny(head), 1
    before = explain(net, images, method, targets=t, multilabel=True, raw=True)
    with torch.no_grad():
        head_weight(net)[2].mul_(-3.0)
    torch.testing.assert_close(explain(net, images, method, targets=t, multilabel=True, raw=True), before)
    with torch.no_grad():
        head_weight(net)[t].mul_(-3.0)
    assert not torch.allclose(explain(net, images, method, targets=t, multilabel=True, raw=True), before)


def test_relevance_cam_of_a_multilabel_model_does_not_contrast_the_attributes(images):
    """multilabel=True starts from the target alone; the contrastive start of single-label models subtracts the
    other outputs' evidence, so there another attribute's weights change the map."""
    net = tiny("abn")
    single, contrastive = (explain(net, images, "relevance_cam", targets=1, multilabel=flag, raw=True)
                           for flag in (True, False))
    with torch.no_grad():
        net.head.fc.weight[2].mul_(-3.0)
    torch.testing.assert_close(explain(net, images, "relevance_cam", targets=1, multilabel=True, raw=True), single)
    assert not torch.allclose(explain(net, images, "relevance_cam", targets=1, multilabel=False, raw=True), contrastive)


@pytest.mark.parametrize("task_head", ["two_way", "one_logit"])
def test_relevance_through_the_attribute_head_is_conserved(task_head, images):
    """The head's logit (z₁ − z₀ for the 2-way head) is one linear unit under the z⁺ rule: the unit relevance at
    the logit reaches the last stage's output whole (average pooling and the head conserve it)."""
    net = tiny("multitask", task_head=task_head)
    relevance, _ = layer_relevance(AttributeView(net, TARGETS), images, torch.zeros(2, dtype=torch.long),
                                   ["last_stage"], start="unit")
    torch.testing.assert_close(relevance["last_stage"].sum(dim=(1, 2, 3)), torch.ones(2), rtol=1e-4, atol=1e-4)


def test_the_multitask_model_is_left_as_it_was(images):
    net = tiny("multitask", task_chunk=2).train()
    net.features.eval()  # a mixed state must survive
    buffers = [buffer.clone() for buffer in net.buffers()]
    modes = [module.training for module in net.modules()]
    for method in applicable_methods(net):
        explain(net, images, method)  # no targets: a prediction pass first
    assert [module.training for module in net.modules()] == modes
    assert all(torch.equal(old, new) for old, new in zip(buffers, net.buffers()))  # BatchNorm statistics untouched
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in net.modules()) == 0
    assert all(getattr(m, "tasks", 1) == 1 for m in net.modules()) and all(p.grad is None for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())


def test_a_module_trained_multilabel_is_explained_as_multilabel(images):
    from abn.module import ABNModule

    torch.manual_seed(0)
    module = ABNModule(arch="resnet20", head="abn", num_classes=T, task="multilabel")
    torch.testing.assert_close(explain(module, images, "relevance_cam", targets=1),
                               explain(module.net, images, "relevance_cam", targets=1, multilabel=True))


def test_differentiable_maps_of_an_attribute(images):
    net = tiny("multitask").train()
    maps = explain(net, images, "abn", targets=TARGETS, differentiable=True, raw=True)
    maps.sum().backward()
    assert net.attention_branch.map_conv.weight.grad[TARGETS].abs().sum() > 0
    assert net.attention_branch.map_conv.weight.grad[[0, 2]].abs().sum() == 0  # the other attributes' maps: unused
    assert net.training  # left in the mode it was in


def test_targets_out_of_range_name_the_attribute_count(multitask, abn_multilabel, images):
    with pytest.raises(ValueError, match=r"target attribute 4 is out of range: the model has 4 attributes"):
        explain(multitask, images, "gradcam", targets=4)
    with pytest.raises(ValueError, match=r"target attribute -1 is out of range: the model has 4 attributes"):
        explain(abn_multilabel, images, "abn", targets=torch.tensor([0, -1]), multilabel=True)
    with pytest.raises(ValueError, match="2 integer attribute indices"):
        explain(multitask, images, "cam", targets=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="multilabel=False does not fit a multi-task ABN"):
        explain(multitask, images, "abn", multilabel=False)


# ----------------------------------------------------------------------------------------------------------------
# Metrics of attributes


def test_energy_on_the_other_objects():
    maps = torch.zeros(3, 10, 10)
    maps[:, 0:2, 0:2] = 1.0  # 4 px on the own box
    maps[:, 5:7, 5:6] = 1.0  # 2 px on another object's box
    maps[:, 9, 9] = 2.0  # 2 units elsewhere
    own = torch.tensor([[0, 0, 2, 2]] * 3, dtype=torch.float)
    nan = [float("nan")] * 4
    others = torch.tensor([[[5, 5, 8, 8], nan], [nan, [5, 5, 6, 7]], [nan, nan]])  # the third has no other object
    metric = OtherObjectsEnergy()
    metric.update(maps, own, others)
    assert metric.compute().item() == pytest.approx(2 / 8)
    assert int(metric.total) == 2
    empty = OtherObjectsEnergy()
    empty.update(maps[2:], own[2:], others[2:])
    assert math.isnan(empty.compute().item())
    with pytest.raises(ValueError, match="other_boxes must have shape B×K×4"):
        metric.update(maps, own, others[:, 0])


class FixedLogits(torch.nn.Module):
    """Logits that depend on the mean brightness of the image only: [2·m, 5·m, −1]."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([2 * m, 5 * m, -torch.ones_like(m)], dim=1)


def test_faithfulness_scores_the_attributes_own_probability():
    images = torch.ones(2, 1, 4, 4)
    maps = torch.rand(2, 4, 4)
    targets = torch.tensor([0, 2])
    sigmoid = DeletionAUC(steps=1, score="sigmoid")
    curves = sigmoid.probability_curves(FixedLogits(), images, maps, targets)
    expected_start = torch.sigmoid(torch.tensor([2.0, -1.0]))  # not the softmax over the three attributes
    torch.testing.assert_close(curves[:, 0], expected_start)
    torch.testing.assert_close(curves[:, 1], torch.sigmoid(torch.tensor([0.0, -1.0])))  # everything deleted
    confidence = AverageDropIncrease(score="sigmoid")
    confidence.update(FixedLogits(), images, torch.full((2, 4, 4), 0.5), targets)
    drop = (torch.sigmoid(torch.tensor(2.0)) - torch.sigmoid(torch.tensor(1.0))) / torch.sigmoid(torch.tensor(2.0))
    assert confidence.compute()["average_drop"].item() == pytest.approx(drop.item() / 2)
    with pytest.raises(ValueError, match="score must be 'softmax'.*or 'sigmoid'"):
        DeletionAUC(score="logit")


# ----------------------------------------------------------------------------------------------------------------
# abn-explain on a multi-label checkpoint

ATTRIBUTES = list(SHAPE_NAMES[:3])
TINY_MULTISHAPES = ["data=multishapes", "data.num_attributes=3", "data.max_objects=2", "data.image_size=40",
                    "data.train_size=16", "data.val_size=8", "data.test_size=12", "data.batch_size=16"]


def trained_run(folder: Path, head: str) -> Path:
    """A ``head`` network trained one step on the multi-shapes data, saved as abn-train saves a run."""
    cfg = compose_train_config(folder, TINY_MULTISHAPES + [f"model.head={head}", "trainer.max_epochs=1", "logger=none"])
    (folder / ".hydra").mkdir()
    OmegaConf.save({key: cfg[key] for key in cfg if key != "hydra"}, folder / ".hydra" / "config.yaml")
    train(cfg)
    GlobalHydra.instance().clear()
    return folder


@pytest.fixture(scope="module")
def multitask_run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory.mktemp("multitask_run"), "multitask")


def explain_config(tmp_path: Path, run: Path, overrides: list[str]):
    cfg = compose_train_config(tmp_path, [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "batch_size=12",
                                          "num_batches=1", "metrics.deletion_steps=2", "grid_images=3", *overrides],
                               config_name="explain")
    GlobalHydra.instance().clear()
    return cfg


def test_explains_every_attribute_with_a_row_each_and_a_mean_row(tmp_path, multitask_run):
    result = run_explain(explain_config(tmp_path, multitask_run, ["methods=[abn,gradcam,random]"]))
    rows = result["rows"]
    assert [(row["method"], row["attribute"]) for row in rows] == [
        (method, attribute) for method in ("abn", "gradcam", "random") for attribute in [*ATTRIBUTES, "mean"]]
    targets = generate_multishapes_split(12, 3, 2, "test", image_size=40)[1]
    assert [row["present"] for row in rows[:3]] == targets.sum(0).long().tolist()
    metrics = ("pointing_game", "energy_pointing_game", "energy_other_objects", "localization_error",
               "deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")
    for row in rows:
        assert all(math.isnan(row[key]) or 0.0 <= row[key] <= 1.0 for key in metrics), row
        assert not math.isnan(row["pointing_game"])  # every attribute is present somewhere in these 12 images
    for row in rows[:3]:
        assert row["energy_pointing_game"] + row["energy_other_objects"] <= 1.0 + 1e-6
        assert math.isnan(row["deletion_auc"]) == (row["predicted"] == 0)  # scored where the model predicts it
    for method_rows in (rows[0:4], rows[4:8]):
        for key in ("pointing_game", "energy_other_objects"):
            values = [row[key] for row in method_rows[:3] if not math.isnan(row[key])]
            assert method_rows[3][key] == pytest.approx(sum(values) / len(values))
    with open(tmp_path / "metrics.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0])[:5] == ["method", "layer", "attribute", "present", "predicted"]
    assert [line["attribute"] for line in table] == [*ATTRIBUTES, "mean"] * 3
    markdown = (tmp_path / "metrics.md").read_text()
    assert "(multitask head), test split, 12 images; mean attribute accuracy" in markdown
    assert "| gradcam | default | circle |" in markdown and "energy_other_objects" in markdown
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(summary["attribute_acc"]) == sorted(ATTRIBUTES) and "acc_att" in summary
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == [
        "test_batch_000_abn.png", "test_batch_000_gradcam.png", "test_batch_000_random.png"]
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert len(events.Images("explain/test/gradcam")) == 1
    assert "explain/gradcam/energy_other_objects" in events.Tags()["scalars"]  # the mean rows


def test_a_multilabel_abn_checkpoint_with_every_method(tmp_path_factory, tmp_path):
    run = trained_run(tmp_path_factory.mktemp("abn_run"), "abn")
    rows = run_explain(explain_config(tmp_path, run, ["grid_batches=0", "tensorboard=false"]))["rows"]
    assert [(row["method"], row["attribute"]) for row in rows] == [
        (method, attribute) for method in METHODS for attribute in [*ATTRIBUTES, "mean"]]
    for row in rows:
        assert math.isnan(row["insertion_auc"]) == (row["predicted"] == 0)
        assert 0.0 <= row["energy_pointing_game"] <= 1.0
    assert "(abn head)" in (tmp_path / "metrics.md").read_text()


def test_chosen_attributes_in_their_order(tmp_path, multitask_run):
    cfg = explain_config(tmp_path, multitask_run, ["methods=[cam]", "attributes=[triangle,circle]",
                                                   "metrics.faithfulness=false", "tensorboard=false",
                                                   "grid_batches=0"])
    rows = run_explain(cfg)["rows"]
    assert [row["attribute"] for row in rows] == ["triangle", "circle", "mean"]
    assert "deletion_auc" not in rows[0] and "energy_other_objects" in rows[0]


@pytest.mark.parametrize("overrides, message", [
    (["attributes=[cirlce]"], r"attributes: cirlce not among the attributes \(cirlce: did you mean circle\?\); "
                              r"choose from: circle, square, triangle, or null for all"),
    (["attributes=[]"], "attributes is an empty list"),
    (["data=multishapes", "data.test_size=4"], r"the checkpoint's model has 3 attributes \(circle, square, triangle\), "
                                               r"the data 5: explain it on the data it was trained on .*or set "
                                               r"data.num_attributes=3"),
    (["data=shapes"], "the checkpoint's model is multi-label .* with 3 outputs, but this data is single-label"),
])
def test_bad_inputs(tmp_path, multitask_run, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_explain(explain_config(tmp_path, multitask_run, overrides))
    assert not (tmp_path / "metrics.csv").exists()


def test_attributes_of_a_single_label_model_are_refused():
    with pytest.raises(ValueError, match=r"attributes= chooses attributes of a multi-label model; this checkpoint is "
                                         r"a single-label classifier \(4 classes\): leave attributes out"):
        choose_attributes(["circle"], [], tiny("abn"))
