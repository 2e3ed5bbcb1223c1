"""Decision-level single-attention multiple-instance pooling (Kong et al. 2018; Gururani et al. 2019).

A clip is a bag of T frame embeddings. Every frame goes through the same small
network; per class c, a frame t gets a probability ``cla[t, c] = sigmoid(.)`` and an
attention weight ``att[t, c]``, normalised over time; the clip probability is the
attention-weighted mean ``sum_t att[t, c] * cla[t, c]``.

Attention normalisation: softmax over time, i.e. ``exp(a_t) / sum_t exp(a_t)`` -- the
form of Kong et al.'s attention block in PANNs (Kong et al. 2020), and Kong et al.
(2018)'s ``att_t / sum_t att_t`` with ``exp`` as the non-negative function (their
sigmoid needs a clip at epsilon to avoid 0/0). With T = 1 the clip probability is
the frame probability.

Layers (Kong et al. 2018's embedding mapping): input BatchNorm over the F features,
then L x (Linear -> BatchNorm1d -> ReLU -> dropout), with a residual connection to
the layer's input where widths match (every layer after the first; the first too if
F == H).

Two networks (``ModelConfig.arch``):

- ``residual`` (tagtune's): the softmax attention and per-layer residuals above.
- ``paper``: the network of the paper's code (SiddGururani/audio_missing_labels,
  ``src/model/Attention.py``), exactly: attention ``a = clamp(sigmoid(.), 1e-7, 1 - 1e-7)``
  normalised by its sum over time; embedding Linears without bias (its 1x1 convolutions),
  then BatchNorm -> ReLU -> dropout as above, but no per-layer residual: ONE skip adds the
  raw input -- before the input BatchNorm -- to the output of the whole stack (after the
  last dropout), so H must equal F (its code sets H = F; L = 0 gives BN(x) + x); the clip
  probability goes through ``hardtanh(., 0, 1)``; its initialisation: weights uniform in
  +-sqrt(6 / fan_in), biases 0, BatchNorm weights 1.

Every dropout goes through :func:`dropout` with an explicit ``torch.Generator``, so
the noise is reproducible and the function can be swapped for a faster one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from tagtune.study.configbase import ModelConfig
from tagtune.study.errors import ConfigError
from tagtune.study.nn import device as devices
from tagtune.study.nn import fused as fused_residual
from tagtune.study.nn import fused_paper, precision
from tagtune.study.nn.fast import keep_mask
from tagtune.study.nn.fused_paper import EPS_ATT


class DrawnMasks:
    """Dropout masks drawn before a forward, handed to it in place of a generator: one per
    dropout, in the order the forward applies them, already scaled by 1/(1-p).

    A stacked forward (:func:`tagtune.study.fit.stacked.forward`) runs this module's own forward
    under ``torch.func.vmap``, where nothing can draw from a member's generator; it draws each
    member's masks first, in the order and shape its solo forward would.
    """

    def __init__(self, masks: list[Tensor]):
        self._masks = iter(masks)

    def next(self) -> Tensor:
        return next(self._masks)


def dropout(x: Tensor, p: float, training: bool, generator: torch.Generator | DrawnMasks | None = None,
            generic: bool = False) -> Tensor:
    """Inverted dropout: zero each entry with probability ``p``, scale the rest by 1/(1-p).

    The mask comes from :func:`tagtune.study.nn.fast.keep_mask` (16-bit integers against a
    threshold: ~10x cheaper than ``bernoulli_``; the keep rate is within 2^-17 of 1 - p);
    ``generic``: from torch's ``bernoulli_`` on ``x``'s device (the GPU path); given
    :class:`DrawnMasks`: their next.
    """
    if not training or p == 0.0:
        return x
    if isinstance(generator, DrawnMasks):
        return x * generator.next()
    if generic:
        return devices.dropout(x, p, generator)
    return x * keep_mask(x.shape, p, generator)


class AttentionMIL(nn.Module):
    """(N, T, F) frame embeddings -> (N, C) clip probabilities."""

    def __init__(self, n_features: int, n_classes: int, cfg: ModelConfig):
        super().__init__()
        self.p, self.arch = cfg.dropout, cfg.arch
        self.generic = False  # the generic torch path (GPU): plain autograd, native dropout
        self.lowp: torch.dtype | None = None  # bf16: mixed precision (tagtune.study.nn.precision)
        paper = cfg.arch == "paper"
        if paper and cfg.hidden != n_features:
            raise ConfigError("model.hidden", f"the paper network adds the raw input (F = {n_features}) "
                              f"to the stack's output: needs hidden = {n_features}, got {cfg.hidden}")
        self.norm = nn.BatchNorm1d(n_features)
        widths = [n_features] + [cfg.hidden] * cfg.layers
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=not paper)
                                     for a, b in zip(widths, widths[1:], strict=False))
        self.bns = nn.ModuleList(nn.BatchNorm1d(b) for b in widths[1:])
        self.att = nn.Linear(widths[-1], n_classes)
        self.cla = nn.Linear(widths[-1], n_classes)
        if paper:  # its init_layer: uniform(+-sqrt(2 / fan_in) * sqrt(3)), bias 0
            for lin in (*self.linears, self.att, self.cla):
                bound = math.sqrt(6.0 / lin.in_features)
                nn.init.uniform_(lin.weight, -bound, bound)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # The same math (masks, running statistics), with fewer passes over memory.
        fused = fused_paper if self.arch == "paper" else fused_residual
        if self.generic:  # the fused kernels are CPU code (16-bit masks, CPU-sized passes)
            return self._autocast_forward(x, generator)
        if self.training and x.shape[0] * x.shape[1] > 1:
            return fused.train_forward(self, x, generator)
        if not self.training and not torch.is_grad_enabled():
            return fused.eval_forward(self, x)
        return self._autocast_forward(x, generator)

    def _autocast_forward(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """reference_forward; in bf16 under torch's autocast, the probabilities in fp32."""
        if self.lowp is None:
            return self.reference_forward(x, generator)
        with precision.autocast(x.device, self.lowp):
            return self.reference_forward(x, generator).float()

    def reference_forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The network as written; :func:`tagtune.study.nn.fused.train_forward` (residual) and
        :func:`tagtune.study.nn.fused_paper.train_forward` (paper) must equal it."""
        if self.arch == "paper":
            return self._paper_forward(x, generator)
        N, T, F = x.shape
        h = self.norm(x.reshape(N * T, F))  # frames are the BatchNorm's samples
        for linear, bn in zip(self.linears, self.bns, strict=True):
            z = dropout(torch.relu(bn(linear(h))), self.p, self.training, generator, self.generic)
            h = z + h if z.shape == h.shape else z
        # .float(): a no-op in fp32; under bf16 autocast the probabilities are computed from
        # fp32 logits (bf16's 8 bits would round a probability above ~0.996 to 1: BCE's log 0).
        att = torch.softmax(self.att(h).float().view(N, T, -1), dim=1)
        cla = torch.sigmoid(self.cla(h).float().view(N, T, -1))
        # Rounding can push the weighted mean a hair above 1; BCE refuses that.
        return (att * cla).sum(dim=1).clamp(0.0, 1.0)

    def _paper_forward(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        N, T, F = x.shape
        x2 = x.reshape(N * T, F)
        h = self.norm(x2)
        for linear, bn in zip(self.linears, self.bns, strict=True):
            h = dropout(torch.relu(bn(linear(h))), self.p, self.training, generator, self.generic)
        h = h + x2  # the one skip: the raw input, not its BatchNorm
        att = torch.sigmoid(self.att(h).float().view(N, T, -1)).clamp(EPS_ATT, 1.0 - EPS_ATT)
        cla = torch.sigmoid(self.cla(h).float().view(N, T, -1))  # fp32 logits, as above
        return torch.nn.functional.hardtanh((att / att.sum(dim=1, keepdim=True) * cla).sum(dim=1), 0.0, 1.0)


def build_model(n_features: int, n_classes: int, cfg: ModelConfig, seed: int) -> AttentionMIL:
    """A freshly initialised model; the initial weights depend only on ``seed``.

    The global torch RNG is forked, so building a model neither reads nor advances it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AttentionMIL(n_features, n_classes, cfg)


@torch.no_grad()
def predict(model: nn.Module, X: np.ndarray | Tensor, batch_size: int = 256) -> np.ndarray:
    """Clip probabilities (N, C) float32 in eval mode, batched; the model's mode is restored.

    256 clips a batch: their activations stay in cache (4096 took 1.8x as long on OpenMIC).
    Batches go to the model's device; the result is on the CPU.
    """
    if not isinstance(X, Tensor):
        X = torch.tensor(np.asarray(X, dtype=np.float32))  # a copy: Split arrays are read-only
    if X.ndim == 2:
        X = X[:, None, :]
    on = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [model(X[i : i + batch_size].to(on)) for i in range(0, X.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).cpu().numpy()


__all__ = ["EPS_ATT", "AttentionMIL", "DrawnMasks", "build_model", "dropout", "predict"]
