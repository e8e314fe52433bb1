"""ple.layers: the MLP block, the batched expert bank, the input guard, entropy and counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ple import seed_everything
from ple.layers import (
    MLP,
    MLPBlock,
    StackedLinear,
    StackedMLP,
    count_parameters,
    normalized_entropy,
)


@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0)


def test_mlp_block_is_linear_layernorm_silu_dropout():
    block = MLPBlock(5, 7, dropout=0.1)
    assert [type(m) for m in block] == [nn.Linear, nn.LayerNorm, nn.SiLU, nn.Dropout]
    assert block[3].p == 0.1
    assert block(torch.randn(4, 5)).shape == (4, 7)


def test_mlp_shapes_and_out_features():
    mlp = MLP(10, (16, 8))
    assert mlp.out_features == 8 and mlp(torch.randn(3, 10)).shape == (3, 8)
    head = MLP(10, [16], out_dim=2)
    assert head.out_features == 2 and head(torch.randn(3, 10)).shape == (3, 2)
    assert isinstance(head[-1], nn.Linear)  # a plain Linear ends a head
    linear_only = MLP(10, (), out_dim=4)
    assert len(linear_only) == 1 and linear_only(torch.randn(2, 10)).shape == (2, 4)


def test_mlp_block_matches_formula():
    block = MLPBlock(6, 5).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    a = x @ block[0].weight.T + block[0].bias
    a = (a - a.mean(-1, keepdim=True)) / torch.sqrt(a.var(-1, unbiased=False, keepdim=True) + 1e-5)
    a = a * block[1].weight + block[1].bias
    assert torch.allclose(block(x), a * torch.sigmoid(a), atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_dim": 0, "hidden_dims": (4,)}, "in_dim must be an int >= 1; got 0"),
        ({"in_dim": 3, "hidden_dims": (4, -1)}, r"hidden_dims\[1\] must be an int >= 1; got -1"),
        ({"in_dim": 3, "hidden_dims": 4}, "hidden_dims must be a sequence"),
        ({"in_dim": 3, "hidden_dims": ()}, "at least one hidden dim or an out_dim"),
        ({"in_dim": 3, "hidden_dims": (4,), "dropout": 1.0}, r"dropout must be a float in \[0, 1\)"),
    ],
)
def test_mlp_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def test_count_parameters():
    mlp = MLP(10, (4,), out_dim=1)
    expected = (10 * 4 + 4) + (4 + 4) + (4 * 1 + 1)  # Linear, LayerNorm, head
    assert count_parameters(mlp) == expected
    mlp[0][0].weight.requires_grad_(False)
    assert count_parameters(mlp) == expected - 40
    assert count_parameters(mlp, trainable_only=False) == expected


def test_normalized_entropy_ends_and_formula():
    assert float(normalized_entropy(torch.full((5,), 0.2))) == pytest.approx(1.0)
    assert float(normalized_entropy(torch.tensor([0.0, 1.0, 0.0]))) == 0.0
    p = torch.softmax(torch.randn(6, 4, dtype=torch.float64), dim=-1)
    ref = -(p * p.log()).sum(-1) / math.log(4)
    assert torch.allclose(normalized_entropy(p), ref, atol=1e-12)
    assert normalized_entropy(torch.ones(3, 1)).tolist() == [0.0, 0.0, 0.0]


def test_stacked_linear_shared_and_per_member_input():
    lin = StackedLinear(3, 5, 2)
    x = torch.randn(4, 5)
    y = lin(x)
    assert y.shape == (4, 3, 2)
    assert torch.allclose(y[:, 1], x @ lin.weight[1] + lin.bias[1], atol=1e-6)
    xm = torch.randn(4, 3, 5)
    assert torch.allclose(lin(xm)[:, 2], xm[:, 2] @ lin.weight[2] + lin.bias[2], atol=1e-6)
    with pytest.raises(ValueError, match=r"x has shape \[4, 6\]; expected \[B, 5\] or \[B, 3, 5\]"):
        lin(torch.randn(4, 6))


@pytest.mark.parametrize("hidden_dims", [(6,), (6, 4)])
def test_stacked_mlp_equals_its_members(hidden_dims):
    bank = StackedMLP(5, 7, hidden_dims).double()
    x = torch.randn(9, 7, dtype=torch.float64)
    out = bank(x)
    assert out.shape == (9, 5, hidden_dims[-1]) and bank.out_features == hidden_dims[-1]
    for m in range(5):
        assert torch.allclose(out[:, m], bank.member(m)(x), atol=1e-12)
    per_member = torch.randn(9, 5, 7, dtype=torch.float64)
    out = bank(per_member)
    for m in range(5):
        assert torch.allclose(out[:, m], bank.member(m)(per_member[:, m]), atol=1e-12)
    with pytest.raises(ValueError, match=r"m must be in \[0, 5\)"):
        bank.member(5)


def test_stacked_mlp_members_are_independent():
    bank = StackedMLP(4, 3, (5,))
    x = torch.randn(6, 3)
    bank(x)[:, 2].sum().backward()
    grad = bank[0].linear.weight.grad
    assert grad[2].abs().sum() > 0
    assert grad[[0, 1, 3]].abs().sum() == 0
    with pytest.raises(ValueError, match="hidden_dims must name at least one"):
        StackedMLP(4, 3, ())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalized_entropy_gradient_is_finite_at_an_underflowed_weight(dtype):
    logits = torch.tensor([[30.0, 0.0, -1000.0]], dtype=dtype, requires_grad=True)
    p = torch.softmax(logits, dim=-1)
    assert float(p[0, 2]) == 0.0  # underflowed
    normalized_entropy(p).sum().backward()
    assert torch.isfinite(logits.grad).all()
    # the value is still the formula with 0 log 0 = 0
    q = p.detach().double()
    nz = q[q > 0]
    assert float(normalized_entropy(p.detach())) == pytest.approx(float(-(nz * nz.log()).sum() / math.log(3)), abs=1e-12)


# ---------------------------------------------------------------- issue 18: input contract defects
@pytest.mark.parametrize("make", [lambda: MLP(4, [3]), lambda: MLPBlock(4, 3), lambda: StackedLinear(2, 4, 3)])
def test_layers_reject_1d_input_and_a_foreign_dtype(make):
    layer = make()
    with pytest.raises(ValueError, match=r"x has shape \[4\]; expected \[B, 4\]"):
        layer(torch.randn(4))
    with pytest.raises(TypeError, match=r"x has dtype torch.float64; expected torch.float32"):
        layer(torch.randn(2, 4, dtype=torch.float64))
    assert layer.double()(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64


def test_normalized_entropy_rejects_what_is_not_a_distribution():
    from ple.checks import validation
    from ple.layers import normalized_entropy

    for p in (torch.tensor([2.0, 0.0]), torch.tensor([-0.5, 1.5]), torch.tensor([float("nan"), 1.0])):
        with pytest.raises(ValueError, match="p must hold probability vectors"):
            normalized_entropy(p)
    assert normalized_entropy(torch.tensor([0.5, 0.5])).item() == pytest.approx(1.0)
    with validation(False):  # inside the training step: no device sync, no check
        normalized_entropy(torch.tensor([2.0, 0.0]))
