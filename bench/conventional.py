"""The reference: a conventional, paper-like training loop, written independently of tagtune.

It mirrors the style of the paper's public code (Gururani & Lerch 2021) and of most
PyTorch tutorials: a per-sample ``torch.utils.data.Dataset`` + ``DataLoader(batch_size=64,
shuffle=True)``, ``nn.Dropout`` modules, ``nn.BCELoss``, ``torch.optim.Adam`` with its
defaults (foreach) and ``weight_decay=1e-5``, ``loss.item()`` every step, a validation pass
every epoch. The math is tagtune's: input BatchNorm over the features, L x (Linear ->
BatchNorm1d -> ReLU -> Dropout) with a residual where widths match, per-class softmax
attention over time pooling per-frame sigmoid probabilities (``arch="residual"``); or the
paper code's network (``arch="paper"``): bias-free Linears, no per-layer residual but the
raw input added to the stack's output, a clamped sigmoid attention normalised over time,
hardtanh, its uniform(+-sqrt(6/fan_in)) initialisation. MT's EMA warms up as the paper's
code does (``global_step += 1`` then alpha = min(1 - 1/(global_step + 1), alpha)).

``bench/bench_speed.py`` times it against ``tagtune.study.fit.train.fit`` and
``tests/study/test_fast.py`` checks that both reach statistically the same validation loss.
Methods: ``b0`` (missing = negative), ``b1`` (masked BCE), ``le`` (a b0 teacher stage,
the teacher's scores on the training set, a b1 student stage on the enhanced mask),
``mt`` (masked BCE + beta * MSE to an EMA teacher that also sees dropout noise).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.metrics import average_precision_score, f1_score
from torch import nn


class ClipDataset(torch.utils.data.Dataset):
    """One clip per item: (X (T, F), Y (C,), M (C,)) as tensors."""

    def __init__(self, X: np.ndarray, Y: np.ndarray, M: np.ndarray):
        self.X, self.Y, self.M = X, Y, M

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int):
        return (torch.from_numpy(np.array(self.X[i], dtype=np.float32)),
                torch.from_numpy(np.array(self.Y[i], dtype=np.float32)),
                torch.from_numpy(np.array(self.M[i], dtype=np.float32)))


class AttentionMIL(nn.Module):
    """(B, T, F) -> (B, C) clip probabilities, decision-level single attention."""

    def __init__(self, n_features: int, n_classes: int, layers: int = 3, hidden: int = 128,
                 dropout: float = 0.6, arch: str = "residual"):
        super().__init__()
        self.paper = arch == "paper"
        self.bn_in = nn.BatchNorm1d(n_features)
        blocks, width = [], n_features
        for _ in range(layers):
            blocks.append(nn.Sequential(nn.Linear(width, hidden, bias=not self.paper),
                                        nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout)))
            width = hidden
        self.blocks = nn.ModuleList(blocks)
        self.attention = nn.Linear(width, n_classes)
        self.classifier = nn.Linear(width, n_classes)
        if self.paper:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    bound = (6.0 / m.in_features) ** 0.5
                    nn.init.uniform_(m.weight, -bound, bound)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, F = x.shape
        h = self.bn_in(x.reshape(B * T, F))
        if self.paper:
            for block in self.blocks:
                h = block(h)
            h = h + x.reshape(B * T, F)
            att = torch.clamp(torch.sigmoid(self.attention(h).view(B, T, -1)), 1e-7, 1 - 1e-7)
            cla = torch.sigmoid(self.classifier(h).view(B, T, -1))
            return nn.functional.hardtanh((att / att.sum(dim=1, keepdim=True) * cla).sum(dim=1), 0.0, 1.0)
        for block in self.blocks:
            out = block(h)
            h = out + h if out.shape == h.shape else out
        att = torch.softmax(self.attention(h).view(B, T, -1), dim=1)
        cla = torch.sigmoid(self.classifier(h).view(B, T, -1))
        return (att * cla).sum(dim=1).clamp(0.0, 1.0)


def masked_loss(p, y, m, criterion):
    """BCE averaged over the observed entries (m = 1) of the batch."""
    return (criterion(p, y) * m).sum() / m.sum().clamp(min=1.0)


def validate(model, loader, criterion) -> tuple[float, dict[str, float]]:
    """Masked BCE over the validation set (the model-selection criterion) and the metrics
    tagtune logs every epoch: per-class F1 macro at 0.5 (OpenMIC), micro/macro AUPRC, all
    over the observed labels."""
    model.eval()
    total, count = 0.0, 0.0
    scores, labels, masks = [], [], []
    with torch.no_grad():
        for x, y, m in loader:
            p = model(x)
            total += (criterion(p, y) * m).sum().item()
            count += m.sum().item()
            scores.append(p.numpy())
            labels.append(y.numpy())
            masks.append(m.numpy() > 0)
    model.train()
    S, Y, M = np.concatenate(scores), np.concatenate(labels).astype(int), np.concatenate(masks)
    f1s, aps = [], []
    for c in range(Y.shape[1]):
        y, s = Y[M[:, c], c], S[M[:, c], c]
        if len(y):
            f1s.append(f1_score(y, (s >= 0.5).astype(int), labels=[0, 1], average="macro",
                                zero_division=0))
        if y.any():
            aps.append(average_precision_score(y, s))
    metrics = {"f1_macro": float(np.mean(f1s)) if f1s else float("nan"),
               "auprc_micro": float(average_precision_score(Y[M], S[M])) if Y[M].any() else 0.0,
               "auprc_macro": float(np.mean(aps)) if aps else float("nan")}
    return total / max(count, 1.0), metrics


def train_stage(model, train, valid, epochs, method, lr=1e-3, weight_decay=1e-5, alpha=0.999,
                beta=3.0, batch_size=64, ema_warmup=True):
    """Train ``model`` for ``epochs``; returns the lowest validation loss (MT: the teacher's),
    and ``model`` ends with the weights of that epoch (MT: the student's last weights)."""
    loader = torch.utils.data.DataLoader(ClipDataset(*train), batch_size=batch_size,
                                         shuffle=True)
    valid_loader = torch.utils.data.DataLoader(ClipDataset(*valid), batch_size=batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    criterion = nn.BCELoss(reduction="none")
    mse = nn.MSELoss()
    teacher = None
    if method == "mt":
        teacher = copy.deepcopy(model)
        for param in teacher.parameters():
            param.requires_grad_(False)
    model.train()
    best_loss, best_state = float("inf"), None
    global_step = 0
    for _ in range(epochs):
        running = 0.0
        for x, y, m in loader:
            optimizer.zero_grad()
            p = model(x)
            if method == "b0":
                loss = criterion(p, y).mean()
            else:
                loss = masked_loss(p, y, m, criterion)
            if teacher is not None:
                with torch.no_grad():
                    p_teacher = teacher(x)
                loss = loss + beta * mse(p, p_teacher)
            loss.backward()
            optimizer.step()
            global_step += 1
            if teacher is not None:
                a = min(1 - 1 / (global_step + 1), alpha) if ema_warmup else alpha
                with torch.no_grad():
                    for t_param, s_param in zip(teacher.parameters(), model.parameters(),
                                                strict=True):
                        t_param.mul_(a).add_(s_param, alpha=1 - a)
            running += loss.item()
        selected = teacher if teacher is not None else model  # MT selects the teacher
        val_loss, _ = validate(selected, valid_loader, criterion)
        if teacher is not None:
            validate(model, valid_loader, criterion)  # the student's figures, logged too
        if val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(selected.state_dict())
    if teacher is None:
        model.load_state_dict(best_state)
    return best_loss


def predict(model, X: np.ndarray, batch_size: int = 64) -> np.ndarray:
    model.eval()
    loader = torch.utils.data.DataLoader(ClipDataset(X, X[:, 0, :1], X[:, 0, :1]),
                                         batch_size=batch_size)
    with torch.no_grad():
        out = torch.cat([model(x) for x, _, _ in loader]).numpy()
    model.train()
    return out


def enhance(scores: np.ndarray, Y: np.ndarray, M: np.ndarray, gamma: float) -> np.ndarray:
    """LE's enhanced mask: per class, missing labels scored at or above the gamma-th
    percentile of the teacher's scores on missing labels stay masked; the rest become
    observed negatives (Y is already 0 there)."""
    M = M.astype(bool).copy()
    for c in range(Y.shape[1]):
        missing = ~M[:, c]
        if missing.any():
            threshold = np.percentile(scores[missing, c], gamma)
            M[missing, c] = scores[missing, c] < threshold
    return M.astype(np.float32)


def run(train, valid, method: str, epochs: int = 1, seed: int = 0, layers: int = 3,
        hidden: int = 128, dropout: float = 0.6, gamma: float = 10.0, arch: str = "residual",
        **kw) -> float:
    """Train ``method`` on ``train = (X, Y, M)``; returns the selected validation loss."""
    torch.manual_seed(seed)
    n_features, n_classes = train[0].shape[2], train[1].shape[1]

    def new_model():
        return AttentionMIL(n_features, n_classes, layers, hidden, dropout, arch)

    if method != "le":
        return train_stage(new_model(), train, valid, epochs, method, **kw)
    teacher = new_model()
    train_stage(teacher, train, valid, epochs, "b0", **kw)
    M_enhanced = enhance(predict(teacher, train[0]), train[1], train[2], gamma)
    return train_stage(new_model(), (train[0], train[1], M_enhanced), valid, epochs, "b1", **kw)
