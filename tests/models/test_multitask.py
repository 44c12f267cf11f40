"""The multitask head (the paper's CelebA model): batched perception passes equal the authors' per-attribute loop,
the attention rule per attribute, the head forms and options."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from abn.models import create_model
from abn.models.network import MultiTaskNetwork, TaskBatchNorm2d

NUM_TASKS = 7


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def loop_reference(net: MultiTaskNetwork) -> MultiTaskNetwork:
    """A copy that runs one attribute at a time: the authors' loop over the shared last stage."""
    reference = copy.deepcopy(net)
    reference.task_chunk = 1
    return reference


def labels(batch: int) -> torch.Tensor:
    return (torch.rand(batch, NUM_TASKS) < 0.5).float()


def multitask_loss(out, targets: torch.Tensor) -> torch.Tensor:
    return (F.binary_cross_entropy_with_logits(out.logits, targets)
            + F.binary_cross_entropy_with_logits(out.att_logits, targets))


@pytest.mark.parametrize("arch,options,chunk", [
    ("resnet20", {}, None), ("resnet20", {}, 3), ("resnet20", {}, NUM_TASKS + 5),
    ("densenet_bc100", {"depth": 22}, 3), ("vgg16_bn_cifar", {"width": 8}, None),
])
def test_batched_training_step_equals_the_loop(arch, options, chunk):
    """Outputs, every gradient and the BatchNorm running statistics of one training step match the loop's."""
    net = create_model(arch, head="multitask", num_classes=NUM_TASKS, task_chunk=chunk, **options).train()
    reference = loop_reference(net).train()
    x, targets = torch.randn(3, 3, 32, 32), labels(3)
    out, expected = net(x), reference(x)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.attention, expected.attention)
    multitask_loss(out, targets).backward()
    multitask_loss(expected, targets).backward()
    for (name, param), reference_param in zip(net.named_parameters(), reference.parameters()):
        scale = reference_param.grad.abs().max().clamp_min(1e-6)
        assert (param.grad - reference_param.grad).abs().max() <= 1e-4 * scale + 1e-5, name  # 1e-5: grads ≈ 0
    for (name, buffer), reference_buffer in zip(net.named_buffers(), reference.buffers()):
        torch.testing.assert_close(buffer, reference_buffer, rtol=1e-4, atol=1e-5, msg=name)


def test_batched_evaluation_equals_the_loop():
    net = create_model("resnet20", head="multitask", num_classes=NUM_TASKS, task_chunk=None).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x).logits, loop_reference(net).eval()(x).logits, rtol=1e-4, atol=1e-5)


def test_batchnorm_of_a_chunk_is_per_attribute():
    """Two attributes whose inputs differ by scale: one pass over both normalises each with its own statistics."""
    norm = TaskBatchNorm2d(2).train()
    first, second = torch.randn(4, 2, 3, 3), 10 * torch.randn(4, 2, 3, 3) + 5
    norm.tasks = 2
    together = norm(torch.stack([first, second], dim=1).flatten(0, 1)).view(4, 2, 2, 3, 3)
    alone = TaskBatchNorm2d(2).train()
    torch.testing.assert_close(together[:, 0], alone(first))
    torch.testing.assert_close(together[:, 1], alone(second))
    torch.testing.assert_close(norm.running_mean, alone.running_mean)
    assert int(norm.num_batches_tracked) == 2


@pytest.mark.parametrize("mode", ["multiply", "residual"])
def test_each_attribute_sees_the_features_weighted_by_its_own_map(mode):
    net = create_model("resnet20", head="multitask", num_classes=3, attention_mode=mode).eval()
    x = torch.randn(2, 3, 32, 32)
    maps = torch.rand(2, 3, 16, 16)
    branch_forward = net.attention_branch.forward
    net.attention_branch.forward = lambda g: (branch_forward(g)[0], maps)
    with torch.no_grad():
        out = net(x)
        g = net.features(x)
        for t in range(3):
            weight = maps[:, t : t + 1] if mode == "multiply" else 1 + maps[:, t : t + 1]
            pooled = net.last_stage(g * weight).mean(dim=(2, 3))
            scores = pooled @ net.head.weight[t].T + net.head.bias[t]
            torch.testing.assert_close(out.logits[:, t], scores[:, 1] - scores[:, 0], rtol=1e-4, atol=1e-5)


def test_the_default_is_the_authors_model():
    """Multiply rule, raw maps from a bias-free 1×1 convolution, max-pooled attention logits, 2-way heads."""
    net = create_model("resnet20", head="multitask", num_classes=NUM_TASKS)
    assert net.attention_mode == "multiply" and net.head.weight.shape == (NUM_TASKS, 2, 64)
    conv = net.attention_branch.map_conv
    assert conv.kernel_size == (1, 1) and conv.bias is None and conv.out_channels == NUM_TASKS
    assert create_model("resnet20", head="abn").attention_mode == "residual"


@pytest.mark.parametrize("arch", ["resnet20", "wrn16_8", "densenet_bc100", "resnet18"])
def test_maps_start_at_the_scale_of_a_linear_classifier(arch):
    """The 1×1 map convolution starts LeCun-normal (std 1/sqrt(C), as the authors' Chainer default), also in the
    families that initialise every convolution He-normal: at std sqrt(2/T) the raw maps reach hundreds within a
    few steps from scratch."""
    weight = create_model(arch, head="multitask", num_classes=40).attention_branch.map_conv.weight
    assert weight.std().item() == pytest.approx(weight.shape[1] ** -0.5, rel=0.1)


def test_the_shared_stage_keeps_the_plain_stage_parameters_and_buffers():
    """Per-attribute BatchNorm replaces the stage's layers without renaming anything: a state dict of the plain
    stage (e.g. pretrained weights) loads into it, and every BatchNorm of the stage is replaced."""
    net = create_model("resnet20", head="multitask", num_classes=NUM_TASKS)
    plain = create_model("resnet20", head="baseline", num_classes=NUM_TASKS).last_stage
    net.last_stage.load_state_dict(plain.state_dict())
    norms = [m for m in net.last_stage.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(isinstance(m, TaskBatchNorm2d) for m in norms)
    assert set(net.task_norms) == set(norms)


def test_two_way_head_loss_is_the_two_way_softmax_cross_entropy():
    net = create_model("resnet20", head="multitask", num_classes=NUM_TASKS, task_chunk=None).eval()
    x, targets = torch.randn(2, 3, 32, 32), labels(2)
    pooled = []
    net.last_stage.register_forward_hook(lambda module, inputs, output: pooled.append(output.mean(dim=(2, 3))))
    with torch.no_grad():
        logit = net(x).logits
    two_way = torch.einsum("btc,toc->bto", pooled[0].view(2, NUM_TASKS, -1), net.head.weight) + net.head.bias
    softmax_ce = F.cross_entropy(two_way.flatten(0, 1), targets.long().flatten())  # B·T 2-way decisions
    torch.testing.assert_close(F.binary_cross_entropy_with_logits(logit, targets), softmax_ce)


def test_variants_of_the_pytorch_port():
    net = create_model("resnet20", head="multitask", num_classes=4, map_pooling="avg", map_activation="sigmoid",
                       task_head="one_logit").eval()
    raw = []
    net.attention_branch.map_conv.register_forward_hook(lambda module, inputs, output: raw.append(output))
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert net.head.weight.shape == (4, 1, 64)
    torch.testing.assert_close(out.attention, torch.sigmoid(raw[0]))  # sigmoid maps
    torch.testing.assert_close(out.att_logits, raw[0].mean(dim=(2, 3)))  # the logit averages the raw map


@pytest.mark.parametrize("option,value,message", [
    ("task_chunk", 0, "task_chunk must be a positive number"),
    ("map_pooling", "sum", "unknown map_pooling 'sum'; valid: max, avg"),
    ("map_activation", "relu", "unknown map_activation 'relu'; valid: none, sigmoid"),
    ("task_head", "three_way", "unknown task_head 'three_way'; valid: two_way, one_logit"),
])
def test_bad_options_name_the_valid_values(option, value, message):
    with pytest.raises(ValueError, match=message):
        create_model("resnet20", head="multitask", num_classes=3, **{option: value})


def test_torchvision_backbones_take_the_head():
    net = create_model("torchvision:resnet18", head="multitask", num_classes=5, split="layer3", task_chunk=2).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 5) and out.attention.shape == (1, 5, 4, 4)


def test_the_batch_size_does_not_grow_with_the_chunk_beyond_the_attribute_count():
    """A chunk larger than T runs all attributes once (no padding, no repeated attribute)."""
    net = create_model("resnet20", head="multitask", num_classes=3, task_chunk=100).eval()
    seen = []
    net.last_stage.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    assert seen == [6]
