"""Synthetic partially labeled data with known ground truth (``Y_full`` on every split).

The generative process, per dataset (the "world") and per clip:

1. Class priors are Zipf-like: the class of rank r is present with marginal probability
   ``pi_r = mean_labels * r**-zipf_exponent / sum_k k**-zipf_exponent`` (capped at 0.9).
2. Co-occurrence comes from a latent scene ("genre" for music, acoustic scene for urban
   sound): each clip draws one of ``n_scenes`` scenes; a scene shifts every class logit by
   ``scene_strength * (sqrt(rho) g[scene, group] + sqrt(1 - rho) e[scene, class])``, so classes
   of one group (instrument family, SONYC coarse category) rise and fall together. Per-class
   base logits are solved so that the mixture's marginals equal the Zipf priors. ``Y_full`` is
   a Bernoulli draw of the clip's logits.
3. Weak labels: a present class is active in a random subset of the T frames (each frame
   with a clip-specific probability in ``active_frames``, and at least one frame), at a random
   loudness in ``amplitude``. The clip label says nothing of which frames.
4. Frames: a latent frame vector is the loudness-weighted sum of the active classes' random
   prototypes (classes of one group share ``family_similarity`` of their prototype), plus
   per-clip (channel) and per-frame noise; the features are ``2 tanh(gain (h W) + b)`` for a
   fixed random projection W, so loud classes saturate (mask) quiet ones. Features are float32
   in (-2, 2), the range of VGGish's clipped embeddings before quantisation.
5. Observation, in every split (OpenMIC's test labels are partial too):
   - annotator uncertainty (SONYC-UST's "X" tags): for a (clip, group) where some class of the
     group is present, with a probability set so that these pairs make ``uncertain_share`` of
     the missing pairs, the whole group is missing;
   - candidate selection (OpenMIC's annotation of a classifier's confident candidates): each
     remaining pair is observed with probability ``sigmoid(candidate_bias * salience + noise +
     offset_c)``, salience = loudness x active fraction of a present class (0 when absent), the
     per-class offset solved to hit that class's target observed fraction. candidate_bias = 0
     is uniform observation.
   openmic-like observes ~10% of pairs, ~45% of them positive; sonyc-like ~94%, near-uniformly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import NamedTuple

import numpy as np

from tagtune.study.data.core import DataError, Dataset, Split
from tagtune.study.data.sonyc import UST_TAXONOMY

OPENMIC_CLASSES = (
    "accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar",
    "mallet_percussion", "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone",
    "trumpet", "ukulele", "violin", "voice",
)
# SONYC-UST's 23 fine classes as the release names them ("1-1_small-sounding-engine"; the X
# tags are annotators' "not sure which", not classes): from the one taxonomy table.
SONYC_FINE_CLASSES = tuple(f"{g}-{f}_{name}" for g, fine in UST_TAXONOMY["fine"].items()
                           for f, name in fine.items() if f != "X")


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the generative process (see the module docstring)."""

    classes: tuple[str, ...]
    """Class names, one per column of Y."""
    groups: tuple[int, ...]
    """Group (instrument family / SONYC coarse category) of each class."""
    prior_rank: tuple[int, ...]
    """Frequency rank of each class, 1 = most frequent (the Zipf rank)."""
    n_train: int
    """Training clips; with n_valid = 0 this is the pool the validation split is drawn from."""
    n_valid: int
    """Validation clips of their own; 0 = draw valid_fraction of the train pool."""
    n_test: int
    """Test clips."""
    valid_fraction: float = 0.15
    """Share of the train pool drawn (seeded) as validation when n_valid = 0 (the paper's 15%)."""
    n_frames: int = 10
    """T: frames per clip."""
    n_features: int = 128
    """F: feature dimension per frame."""
    latent_dim: int = 64
    """Dimension of the latent frame vector before the random nonlinearity."""
    zipf_exponent: float = 1.0
    """Exponent s of the Zipf-like class priors: max/min prior ratio ~ C**s."""
    mean_labels: float = 2.5
    """Expected number of present classes per clip (scales the priors)."""
    n_scenes: int = 8
    """Number of latent scenes (genres) whose mixture correlates the classes."""
    scene_strength: float = 1.5
    """Standard deviation of a scene's shift of a class logit: strength of co-occurrence."""
    scene_group_share: float = 0.5
    """rho: share of a scene's logit shift common to the whole group of a class."""
    active_frames: tuple[float, float] = (0.2, 1.0)
    """Range of the per-(clip, class) probability that a frame is active (>= 1 frame always)."""
    amplitude: tuple[float, float] = (0.4, 1.0)
    """Range of a present class's loudness in a clip."""
    family_similarity: float = 0.3
    """Share of a class prototype common to its group (confusable classes)."""
    clip_noise: float = 1.0
    """Std of the per-clip latent noise (recording channel), relative to a prototype's."""
    frame_noise: float = 1.6
    """Std of the per-frame latent noise, relative to a prototype's."""
    gain: float = 0.5
    """Gain of the tanh nonlinearity: higher saturates more (stronger masking)."""
    observed: float = 0.10
    """Target fraction of (clip, class) pairs observed, in every split."""
    observed_spread: float = 0.3
    """Std of the log of the per-class observed fraction around the target (0 = equal)."""
    candidate_bias: float = 8.0
    """How strongly observation favours salient present classes (0 = uniform)."""
    uncertain_share: float = 0.0
    """Share of the missing pairs due to whole groups left uncertain where present."""

    def __post_init__(self) -> None:
        C = len(self.classes)
        _check(C >= 2 and len(set(self.classes)) == C, "classes", "need >= 2 distinct names")
        _check(len(self.groups) == C, "groups", f"need one group per class ({C})")
        _check(sorted(self.prior_rank) == list(range(1, C + 1)), "prior_rank",
               f"must be a permutation of 1..{C}")
        for name in ("n_train", "n_test", "n_frames", "n_features", "latent_dim", "n_scenes"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _check(self.n_valid >= 0, "n_valid", f"must be >= 0, got {self.n_valid}")
        _check(0 < self.valid_fraction < 1, "valid_fraction", "must be in (0, 1)")
        if self.n_valid == 0:
            n_valid = round(self.valid_fraction * self.n_train)
            _check(1 <= n_valid < self.n_train, "n_train", "train pool too small to draw valid")
        _check(0 < self.mean_labels < 0.9 * C, "mean_labels", f"must be in (0, {0.9 * C})")
        _check(0 < self.observed <= 1, "observed", f"must be in (0, 1], got {self.observed}")
        _check(0 <= self.uncertain_share <= 1, "uncertain_share", "must be in [0, 1]")
        _check(0 <= self.scene_group_share <= 1, "scene_group_share", "must be in [0, 1]")
        _check(0 <= self.family_similarity < 1, "family_similarity", "must be in [0, 1)")
        for name in ("active_frames", "amplitude"):
            lo, hi = getattr(self, name)
            _check(0 < lo <= hi <= 1, name, f"need 0 < low <= high <= 1, got {(lo, hi)}")
        for name in ("zipf_exponent", "scene_strength", "clip_noise", "frame_noise", "gain",
                     "observed_spread", "candidate_bias"):
            _check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")


def _check(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise DataError("synth", field, problem)


_OPENMIC_FAMILIES = (  # keys, plucked strings, bowed strings, woodwinds, brass, percussion, voice
    "accordion organ piano synthesizer", "banjo bass guitar mandolin ukulele", "cello violin",
    "clarinet flute saxophone", "trombone trumpet", "cymbals drums mallet_percussion", "voice",
)
_OPENMIC_ORDER = ("guitar", "voice", "piano", "drums", "synthesizer", "bass", "cymbals", "violin",
                  "saxophone", "trumpet", "organ", "cello", "flute", "mallet_percussion",
                  "trombone", "accordion", "banjo", "mandolin", "clarinet", "ukulele")
_SONYC_ORDER = ("1-2", "7-1", "1-1", "3-1", "1-3", "5-1", "8-1", "5-3", "2-2", "6-1", "7-2", "5-4",
                "6-2", "2-1", "4-2", "5-2", "7-3", "7-4", "2-3", "6-3", "4-1", "2-4", "4-3")

PRESETS: dict[str, SynthConfig] = {
    # OpenMIC-2018: 14,915 train + 5,085 test clips, 10 VGGish frames of 128, 20 instruments.
    "openmic-like": SynthConfig(
        classes=OPENMIC_CLASSES,
        groups=tuple(next(g for g, f in enumerate(_OPENMIC_FAMILIES) if c in f.split())
                     for c in OPENMIC_CLASSES),
        prior_rank=tuple(_OPENMIC_ORDER.index(c) + 1 for c in OPENMIC_CLASSES),
        n_train=14915, n_valid=0, n_test=5085,
    ),
    # SONYC-UST v2: 13,538 train, 4,308 validate, 669 test; 11 OpenL3 frames of 512; 23 fine tags.
    "sonyc-like": SynthConfig(
        classes=SONYC_FINE_CLASSES,
        groups=tuple(int(c[0]) - 1 for c in SONYC_FINE_CLASSES),
        prior_rank=tuple(_SONYC_ORDER.index(c[:3]) + 1 for c in SONYC_FINE_CLASSES),
        n_train=13538, n_valid=4308, n_test=669, n_frames=11, n_features=512,
        zipf_exponent=1.2, mean_labels=2.0, observed=0.94, observed_spread=0.0,
        candidate_bias=0.0, uncertain_share=0.7,
    ),
}


class Clips(NamedTuple):
    """Every clip of one synthetic dataset, in generation order, with its latent truth."""

    X: np.ndarray
    """float32 (N, T, F) features."""
    Y_full: np.ndarray
    """float32 (N, C) clip-level truth."""
    active: np.ndarray
    """bool (N, T, C): frame t of clip n contains class c."""
    salience: np.ndarray
    """float32 (N, C): loudness x active fraction of a present class, 0 when absent."""
    scene: np.ndarray
    """int (N,): the latent scene of each clip."""


def synthesize(preset: str = "openmic-like", seed: int = 0, n_clips: int | None = None,
               observed: float | None = None, **overrides) -> Dataset:
    """A synthetic dataset like ``preset``, deterministic in (preset, seed, overrides).

    ``n_clips`` scales all splits together, keeping the real ratio; ``observed`` and
    ``overrides`` replace :class:`SynthConfig` fields.
    """
    cfg = resolve(preset, n_clips=n_clips, observed=observed, **overrides)
    clips = draw_clips(cfg, seed)
    rng = np.random.default_rng(_streams(seed)[2])
    parts = _partition(cfg, rng)
    rate = class_observed_rates(cfg, rng)
    splits = {}
    for (name, idx), ss in zip(parts.items(), _streams(seed)[3].spawn(3), strict=True):
        M = observe(cfg, clips.Y_full[idx], clips.salience[idx], rate, np.random.default_rng(ss))
        keys = np.array([f"{preset}-{i:06d}" for i in idx])
        splits[name] = Split(clips.X[idx], clips.Y_full[idx] * M, M, keys, clips.Y_full[idx],
                             where=f"synth:{preset}:{name}")
    meta = json.loads(json.dumps({**asdict(cfg), "preset": preset, "seed": seed}))
    if cfg.classes == SONYC_FINE_CLASSES:  # SONYC-UST's classes: the official metric applies
        meta["taxonomy"] = UST_TAXONOMY
    return Dataset(**splits, classes=cfg.classes, name=f"synth-{preset}",
                   source=f"synth:{preset} seed={seed}", observation="partial", meta=meta)


def resolve(preset: str, n_clips: int | None = None, observed: float | None = None,
            **overrides) -> SynthConfig:
    """The preset's config with the sizes scaled to ``n_clips`` and the overrides applied."""
    if preset not in PRESETS:
        raise DataError("synth", "preset", f"unknown preset {preset!r} (one of {sorted(PRESETS)})")
    cfg = PRESETS[preset]
    names = {f.name for f in fields(SynthConfig)}
    for key in overrides:
        _check(key in names, key, "unknown setting")
    if observed is not None:
        overrides["observed"] = observed
    if n_clips is not None:
        total = cfg.n_train + cfg.n_valid + cfg.n_test
        _check(n_clips >= 20, "n_clips", f"must be >= 20, got {n_clips}")
        scale = n_clips / total
        n_test = max(1, round(cfg.n_test * scale))
        n_valid = max(1, round(cfg.n_valid * scale)) if cfg.n_valid else 0
        overrides = {"n_train": n_clips - n_test - n_valid, "n_valid": n_valid,
                     "n_test": n_test, **overrides}
    try:
        return replace(cfg, **overrides)
    except TypeError as e:
        raise DataError("synth", "overrides", str(e)) from e


def draw_clips(cfg: SynthConfig, seed: int) -> Clips:
    """Draw the world and all n_train + n_valid + n_test clips (steps 1-4 of the process)."""
    w, rng = (np.random.default_rng(ss) for ss in _streams(seed)[:2])
    C, T, D = len(cfg.classes), cfg.n_frames, cfg.latent_dim
    N = cfg.n_train + cfg.n_valid + cfg.n_test
    groups = np.asarray(cfg.groups)
    G = groups.max() + 1

    # 1-2: Zipf priors, scene mixture, per-class base logits matching the priors.
    rank = np.asarray(cfg.prior_rank, dtype=float)
    zipf = rank ** -cfg.zipf_exponent
    prior = np.minimum(0.9, cfg.mean_labels * zipf / zipf.sum())
    weights = w.dirichlet(np.full(cfg.n_scenes, 2.0))
    rho = cfg.scene_group_share
    shift = cfg.scene_strength * (np.sqrt(rho) * w.normal(size=(cfg.n_scenes, G))[:, groups]
                                  + np.sqrt(1 - rho) * w.normal(size=(cfg.n_scenes, C)))
    base = _solve_base_logits(prior, weights, shift)
    # 4: prototypes (group-shared part + own part) and the fixed random nonlinearity.
    a = cfg.family_similarity
    protos = (np.sqrt(a) * w.normal(size=(G, D))[groups]
              + np.sqrt(1 - a) * w.normal(size=(C, D))).astype(np.float32)
    W = (w.normal(size=(D, cfg.n_features)) / np.sqrt(D)).astype(np.float32)
    b = w.normal(scale=0.5, size=cfg.n_features).astype(np.float32)

    scene = rng.choice(cfg.n_scenes, size=N, p=weights)
    Y = rng.random((N, C)) < _sigmoid(base + shift[scene])
    # 3: weak labels. Each present class is active in a random subset of frames, >= 1.
    p_frame = rng.uniform(*cfg.active_frames, size=(N, C))
    u = rng.random((N, C, T))
    active = ((u < p_frame[..., None]) | (u == u.min(axis=-1, keepdims=True))) & Y[..., None]
    loud = rng.uniform(*cfg.amplitude, size=(N, C)).astype(np.float32)
    active = active.transpose(0, 2, 1)  # (N, T, C)
    h = (active * loud[:, None, :]) @ protos
    h += cfg.clip_noise * rng.standard_normal((N, 1, D), dtype=np.float32)
    h += cfg.frame_noise * rng.standard_normal((N, T, D), dtype=np.float32)
    X = 2 * np.tanh(cfg.gain * (h @ W) + b)
    salience = (loud * active.mean(axis=1)).astype(np.float32)
    return Clips(X.astype(np.float32), Y.astype(np.float32), active, salience, scene)


def _streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent streams: world, clips, partition + class rates, observation per split.

    Separate streams keep X and Y_full unchanged when only the observation knobs change.
    """
    return np.random.SeedSequence([seed, 0x53594E54]).spawn(4)


def _solve_base_logits(prior: np.ndarray, weights: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Per-class logit b with sum_z weights_z sigmoid(b + shift_zc) = prior_c (bisection)."""
    lo, hi = np.full(prior.shape, -30.0), np.full(prior.shape, 30.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        too_high = weights @ _sigmoid(mid + shift) > prior
        hi, lo = np.where(too_high, mid, hi), np.where(too_high, lo, mid)
    return (lo + hi) / 2


def _partition(cfg: SynthConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Clip indices of train / valid / test; valid is a seeded share of the pool if n_valid = 0."""
    n_pool = cfg.n_train + cfg.n_valid
    test = np.arange(n_pool, n_pool + cfg.n_test)
    if cfg.n_valid:
        return {"train": np.arange(cfg.n_train), "valid": np.arange(cfg.n_train, n_pool),
                "test": test}
    n_valid = round(cfg.valid_fraction * n_pool)
    perm = rng.permutation(n_pool)
    return {"train": np.sort(perm[n_valid:]), "valid": np.sort(perm[:n_valid]), "test": test}


def class_observed_rates(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Per-class target observed fraction, log-normal around ``observed``; shared by all splits."""
    rate = np.exp(cfg.observed_spread * rng.standard_normal(len(cfg.classes)))
    return np.clip(rate * cfg.observed / rate.mean(), 0.002, 1.0)


def observe(cfg: SynthConfig, Y_full: np.ndarray, salience: np.ndarray, rate: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """The observation mask M of one split (step 5): uncertain groups, then candidate selection."""
    N, C = Y_full.shape
    groups = np.asarray(cfg.groups)
    G = groups.max() + 1
    eligible = np.ones((N, C), dtype=bool)
    if cfg.uncertain_share > 0 and cfg.observed < 1:
        onehot = np.eye(G, dtype=bool)[groups]  # (C, G)
        group_present = (Y_full.astype(bool) @ onehot.astype(int)) > 0  # (N, G)
        exposed = group_present @ onehot.T.astype(int)  # pairs in a present group, (N, C)
        budget = cfg.uncertain_share * (1 - cfg.observed) * N * C
        p_uncertain = min(1.0, budget / max(1, exposed.sum()))
        uncertain = group_present & (rng.random((N, G)) < p_uncertain)
        eligible = ~uncertain[:, groups]
    # Classes that uncertainty left too few pairs of give their share to the others.
    room = eligible.mean(axis=0)
    target = np.minimum(rate, room)
    slack = room - target
    target += slack * min(1.0, (cfg.observed * C - target.sum()) / max(slack.sum(), 1e-12))
    score = cfg.candidate_bias * salience + rng.standard_normal((N, C), dtype=np.float32)
    lo, hi = np.full(C, -30.0), np.full(C, 30.0)
    for _ in range(40):  # per-class offset so that the expected observed fraction hits target
        mid = (lo + hi) / 2
        too_high = (eligible * _sigmoid(score + mid)).mean(axis=0) > target
        hi, lo = np.where(too_high, mid, hi), np.where(too_high, lo, mid)
    return eligible & (rng.random((N, C)) < _sigmoid(score + (lo + hi) / 2))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))
