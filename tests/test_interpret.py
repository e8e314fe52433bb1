"""ple.interpret: the sparse autoencoder over the shared concatenation and its side head."""

from __future__ import annotations

import pytest
import torch

from ple.checks import HyperparameterError, InputTypeError, NonFiniteError, ShapeError
from ple.fit import TensorData, fit
from ple.interpret import SAEHead, SAEOutput, SparseAutoencoder, latent_activity, sae_loss


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_shapes_and_posts_defaults(gen):
    sae = SparseAutoencoder()
    assert (sae.input_dim, sae.num_latents, sae.l1_lambda) == (512, 2048, 1e-3)
    out = sae(torch.randn(5, 512, generator=gen))
    assert out.latent.shape == (5, 2048) and out.recon.shape == (5, 512)
    assert (out.latent >= 0).all()
    assert sae.loss(torch.randn(5, 512, generator=gen)).shape == (5,)


def test_tied_decoder_is_the_encoder_transpose():
    sae = SparseAutoencoder(16, 2)
    assert sae.decoder_weight is None
    assert sae.w_dec.data_ptr() == sae.weight.data_ptr() and torch.equal(sae.w_dec, sae.weight.T)
    assert sum(p.numel() for p in sae.parameters()) == 32 * 16 + 32 + 16
    untied = SparseAutoencoder(16, 2, tied=False)
    assert untied.w_dec.shape == (16, 32) and untied.w_dec.data_ptr() != untied.weight.data_ptr()


def test_loss_equals_its_formula_in_float64(gen):
    sae = SparseAutoencoder(8, 3, l1_lambda=0.1).double()
    h = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    z = torch.relu(h @ sae.weight.T + sae.b_enc)
    ref = ((h - (z @ sae.weight + sae.b_dec)) ** 2).sum(1) + 0.1 * z.abs().sum(1)
    torch.testing.assert_close(sae.loss(h), ref, rtol=0, atol=1e-12)


def test_tied_gradient_is_the_sum_of_both_roles(gen):
    sae = SparseAutoencoder(6, 2, l1_lambda=0.05).double()
    untied = SparseAutoencoder(6, 2, tied=False, l1_lambda=0.05).double()
    untied.load_state_dict({**sae.state_dict(), "decoder_weight": sae.weight.detach().T.clone()})
    h = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    sae.loss(h).sum().backward()
    untied.loss(h).sum().backward()
    torch.testing.assert_close(sae.weight.grad, untied.weight.grad + untied.decoder_weight.grad.T)


@pytest.mark.parametrize("bad, err, name", [
    (torch.randn(3, 10), ShapeError, "h"),
    (torch.randn(3), ShapeError, "h"),
    ([[0.0] * 12], InputTypeError, "h"),
    (torch.full((2, 12), float("nan")), NonFiniteError, "h"),
])
def test_bad_input_is_named(bad, err, name):
    with pytest.raises(err, match=name):
        SparseAutoencoder(12, 2)(bad)


@pytest.mark.parametrize("kwargs, field", [
    (dict(input_dim=0), "input_dim"), (dict(expansion=1.5), "expansion"),
    (dict(l1_lambda=-1.0), "l1_lambda"), (dict(tied="yes"), "tied"),
])
def test_bad_hyperparameters_are_named(kwargs, field):
    with pytest.raises(HyperparameterError, match=field):
        SparseAutoencoder(**{"input_dim": 8, **kwargs})


def test_loss_recon_shape_mismatch_is_named():
    with pytest.raises(ShapeError, match="recon"):
        sae_loss(torch.zeros(2, 4), SAEOutput(torch.zeros(2, 8), torch.zeros(2, 5)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_is_finite_float32_in_low_precision(dtype, gen):
    sae = SparseAutoencoder(16, 2).to(dtype)
    h = (torch.randn(4, 16, generator=gen) * 100).to(dtype)
    loss = sae.loss(h)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()


def test_head_detach_keeps_gradients_off_the_input(gen):
    h = torch.randn(4, 8, generator=gen, requires_grad=True)
    head = SAEHead(8, 2)
    out = head(h)
    assert set(out) == {"sae_latent", "sae_recon"}
    head.aux_loss(h, out).backward()
    assert h.grad is None and head.sae.weight.grad is not None
    leaky = SAEHead(8, 2, detach=False)
    leaky.aux_loss(h, leaky(h)).backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_head_aux_loss_is_weighted_mean(gen):
    h = torch.randn(6, 8, generator=gen)
    head = SAEHead(8, 2, loss_weight=0.01)
    out = head(h)
    torch.testing.assert_close(head.aux_loss(h, out), 0.01 * head.sae.loss(h).mean())


def test_fit_trains_it_and_latent_activity_counts(gen):
    h = torch.randn(128, 8, generator=gen)
    sae = SparseAutoencoder(8, 2)
    before = float(sae.loss(h).mean().detach())
    fit(sae.for_fit(), TensorData(h, {"sae": h}), tasks=[sae.fit_task()], epochs=20, batch_size=32, lr=1e-2)
    assert float(sae.loss(h).mean().detach()) < before
    z = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0], [0.0, 2.0, 1.0]])
    act = latent_activity(z)
    assert act["dead"] == 1 and act["dense"] == 2 and act["l0"] == pytest.approx(5 / 3)
    with pytest.raises(HyperparameterError, match="dense_fraction"):
        latent_activity(z, dense_fraction=2.0)
