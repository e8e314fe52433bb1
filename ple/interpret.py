"""ple.interpret -- generated from book/ple6_interpretability_uncertainty.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['SAE_EXPANSION', 'SAE_L1_LAMBDA', 'SAE_LOSS_WEIGHT', 'SAEOutput', 'SparseAutoencoder', 'sae_loss', 'SAEHead', 'latent_activity']

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ple.checks import HyperparameterError, InputTypeError, ShapeError, check_dtype, check_float, check_int, check_tensor
from ple.fit import Task

SAE_EXPANSION = 4        # 512 -> 2048 latents (the posts)
SAE_L1_LAMBDA = 1e-3     # lambda_1 of eq-sae-loss
SAE_LOSS_WEIGHT = 0.01   # weight of the SAE loss in the system's total loss


@dataclass
class SAEOutput:
    """latent z [B, M] (eq-sae-encode) and reconstruction h_hat [B, D] (eq-sae-decode)."""

    latent: torch.Tensor
    recon: torch.Tensor


class SparseAutoencoder(nn.Module):
    """An overcomplete sparse autoencoder with tied weights (eq-sae-encode, eq-sae-decode):

        z = ReLU(W h + b_enc) in R^M,  h_hat = W^T z + b_dec in R^D,  M = expansion * D.

    input_dim: D (512 for the posts' shared concat); expansion: M / D; tied: W_dec = W_enc^T
    (one parameter, `weight` [M, D]); untied adds `decoder_weight` [D, M]. h: [B, D] -> `SAEOutput`.
    """

    def __init__(self, input_dim: int = 512, expansion: int = SAE_EXPANSION, *, tied: bool = True,
                 l1_lambda: float = SAE_L1_LAMBDA) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.expansion = check_int("expansion", expansion)
        if not isinstance(tied, bool):
            raise HyperparameterError(f"tied must be a bool; got {tied!r}")
        self.tied = tied
        self.l1_lambda = check_float("l1_lambda", l1_lambda, 0.0)
        self.num_latents = self.input_dim * self.expansion
        bound = 1.0 / math.sqrt(self.input_dim)
        self.weight = nn.Parameter(torch.empty(self.num_latents, self.input_dim).uniform_(-bound, bound))
        self.b_enc = nn.Parameter(torch.zeros(self.num_latents))
        self.b_dec = nn.Parameter(torch.zeros(self.input_dim))
        self.decoder_weight = None if tied else nn.Parameter(self.weight.detach().T.clone())

    @property
    def w_dec(self) -> torch.Tensor:
        """The decoder matrix [D, M]: W_enc^T when tied (a view of the same parameter)."""
        return self.weight.T if self.tied else self.decoder_weight

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """eq-sae-encode: h [B, D] -> z [B, M], z >= 0."""
        check_tensor(h, "h", ["B", self.input_dim], "input_dim")
        check_dtype(h, "h", self.weight.dtype)
        return F.relu(F.linear(h, self.weight, self.b_enc))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """eq-sae-decode: z [B, M] -> h_hat [B, D]."""
        return F.linear(z, self.w_dec, self.b_dec)

    def forward(self, h: torch.Tensor) -> SAEOutput:
        z = self.encode(h)
        return SAEOutput(z, self.decode(z))

    def loss(self, h: torch.Tensor, out: SAEOutput | None = None) -> torch.Tensor:
        """eq-sae-loss per sample: ||h - h_hat||^2 + l1_lambda ||z||_1, [B] (float32 or wider)."""
        out = self(h) if out is None else out
        return sae_loss(h, out, self.l1_lambda)

    # ------------------------------------------------------------- training with ple.fit
    def fit_task(self, name: str = "sae") -> Task:
        """The `ple.fit.Task` that trains this SAE alone on inputs h and targets h (see `for_fit`)."""
        D = self.input_dim

        def loss(pred, target):
            return sae_loss(target, SAEOutput(pred[:, D:], pred[:, :D]), self.l1_lambda)

        return Task(name, "regression", loss=loss, output=lambda pred: pred[:, :D])

    def for_fit(self, name: str = "sae") -> nn.Module:
        """This SAE as `ple.fit.fit` drives it: model(h) -> {name: [h_hat || z]} [B, D + M]."""
        return _SAEFitView(self, name)


class _SAEFitView(nn.Module):
    def __init__(self, sae: SparseAutoencoder, name: str) -> None:
        super().__init__()
        self.sae, self.name = sae, name

    def forward(self, h):
        out = self.sae(h)
        return {self.name: torch.cat([out.recon, out.latent], dim=1)}


def sae_loss(h: torch.Tensor, out: SAEOutput, l1_lambda: float = SAE_L1_LAMBDA) -> torch.Tensor:
    """eq-sae-loss per sample, [B]: sum_d (h_d - h_hat_d)^2 + l1_lambda sum_m |z_m| (z >= 0).
    Computed in float32 at least (bf16 / fp16 inputs are promoted)."""
    if not isinstance(h, torch.Tensor):
        raise InputTypeError(f"h must be a torch.Tensor [B, D]; got {type(h).__name__}")
    if not isinstance(out, SAEOutput):
        raise InputTypeError(f"out must be an SAEOutput (latent, recon); got {type(out).__name__}")
    l1_lambda = check_float("l1_lambda", l1_lambda, 0.0)
    if out.latent.dim() != 2 or out.latent.shape[0] != h.shape[0]:
        raise ShapeError(f"latent has shape {list(out.latent.shape)}; expected [{h.shape[0]}, M] (the batch of h)")
    if out.recon.shape != h.shape:
        raise ShapeError(f"recon has shape {list(out.recon.shape)}; expected {list(h.shape)} (the shape of h)")
    dt = torch.promote_types(h.dtype, torch.float32)
    r = (h.to(dt) - out.recon.to(dt)).square().sum(dim=1)
    return r + l1_lambda * out.latent.to(dt).abs().sum(dim=1)


class SAEHead(nn.Module):
    """The SAE as a side head of `ple.system.PLESystem` (its `side_heads` hook), off the prediction
    path: it reads h_shared.detach(), so its loss never reaches the experts.

    forward(h_shared [B, D], hidden) -> {"sae_latent": z [B, M], "sae_recon": h_hat [B, D]};
    aux_loss(h_shared, out) -> loss_weight * mean_b L_SAE (a scalar for the system's total loss).
    """

    def __init__(self, input_dim: int = 512, expansion: int = SAE_EXPANSION, *, tied: bool = True,
                 l1_lambda: float = SAE_L1_LAMBDA, loss_weight: float = SAE_LOSS_WEIGHT, detach: bool = True) -> None:
        super().__init__()
        self.sae = SparseAutoencoder(input_dim, expansion, tied=tied, l1_lambda=l1_lambda)
        self.loss_weight = check_float("loss_weight", loss_weight, 0.0)
        if not isinstance(detach, bool):
            raise HyperparameterError(f"detach must be a bool; got {detach!r}")
        self.detach = detach

    def forward(self, h_shared: torch.Tensor, hidden=None) -> dict[str, torch.Tensor]:
        check_tensor(h_shared, "h_shared", ["B", self.sae.input_dim], "input_dim")
        h = h_shared.detach() if self.detach else h_shared
        out = self.sae(h)
        return {"sae_latent": out.latent, "sae_recon": out.recon}

    def aux_loss(self, h_shared: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        h = h_shared.detach() if self.detach else h_shared
        per = sae_loss(h, SAEOutput(out["sae_latent"], out["sae_recon"]), self.sae.l1_lambda)
        return self.loss_weight * per.mean()


def latent_activity(z: torch.Tensor, dense_fraction: float = 0.5) -> dict[str, object]:
    """Firing statistics of SAE latents over a data set z [N, M]: the fraction of samples each
    latent fires on (z > 0) [M], and the counts of dead latents (never fire) and dense ones (fire
    on more than `dense_fraction` of the samples); mean number of active latents per sample (L0)."""
    check_tensor(z, "z", ["N", "M"])
    dense_fraction = check_float("dense_fraction", dense_fraction, 0.0, 1.0)
    if z.shape[0] == 0:
        raise ShapeError(f"z has shape {list(z.shape)}; expected at least one sample (firing rates of 0 samples are undefined)")
    freq = (z > 0).float().mean(dim=0)
    return {"frequency": freq, "dead": int((freq == 0).sum()), "dense": int((freq > dense_fraction).sum()),
            "l0": float((z > 0).float().sum(dim=1).mean())}
