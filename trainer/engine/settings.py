"""Every option of the self-training engine, as one typed settings object.

`EngineSettings` is read by the offline CLI (`pseudoserve fit --config FILE.yaml`), by the online
trainer (environment variables `PSEUDOSERVE_TRAINER_<FIELD>`) and by the benchmarks. Precedence:
explicit keyword arguments > environment variables > YAML file > defaults. That is, a YAML file
gives the base configuration of a deployment and the environment can override any key of it
(the usual twelve-factor order).

The defaults are graph label propagation with entropy weights and a CNN student; the digits
benchmark (bench/ssl_digits.yaml, docs/benchmarks.md section 3) runs them with two changes, left
out of the defaults so that existing deployments and the MNIST configs do not move: a threshold
curriculum 0.7 -> 0.6 -> 0.5 (`threshold_start: 0.7`) and class mass normalization of the
propagated scores (`graph_class_normalization`), which lifted 100 labels from 0.984 to 0.991.
With graph labels the entropy weight is the (soft) selection, so the threshold ends at its floor,
0.5, and distribution alignment and class balance are off; on digits with 20 labels, a schedule
from 0.8 together with alignment and balance cost ~13 points (0.844 vs 0.97, 2 seeds). A quarter
of every student batch comes from the labels, so students fit them and the gate (which, without a
holdout, judges on the labels) does not refuse every student; weight averaging (EMA) smooths the
students. Start the schedule high (e.g. 0.95, decay 0.05) with the `teacher` labeler, where
confidence is all there is. Unknown YAML keys are an error that names the key and lists the
valid ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """A configuration file or value is invalid; the message names the file and the key."""


class EngineSettings(BaseSettings):
    """All engine options; a field is also a YAML key and a `PSEUDOSERVE_TRAINER_*` variable."""

    model_config = SettingsConfigDict(env_prefix="PSEUDOSERVE_TRAINER_", extra="forbid", validate_assignment=True)

    # --- classifier ---------------------------------------------------------------------------
    classifier: Literal["auto", "mlp", "cnn"] = "auto"
    """Network family: `cnn` for images (n, C, H, W), `mlp` for vectors; `auto` picks by shape."""
    hidden_sizes: list[int] = Field(default_factory=lambda: [256, 128])
    """MLP hidden layer widths."""
    cnn_channels: list[int] = Field(default_factory=lambda: [32, 64])
    """CNN stage widths; each stage is two 3x3 conv+BN+ReLU, max-pooled while the map is >= 8 px."""
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    """Dropout before the classifier head (student noise)."""
    epochs: int = Field(30, ge=1)
    """Training epochs per model, counted over the larger of the labeled+pseudo set and the pool."""
    batch_size: int = Field(64, ge=1)
    """Mini-batch size (labeled and pseudo-labeled samples)."""
    lr: float = Field(3e-3, gt=0.0)
    """Peak learning rate of the one-cycle AdamW schedule."""
    weight_decay: float = Field(5e-4, ge=0.0)
    """AdamW weight decay."""
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    """Students (not the supervised bootstrap) keep an exponential moving average of their weights
    while training and return it (0 = off)."""
    labeled_batch_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    """Share of each student mini-batch drawn from the labeled samples (0 = sample labeled and
    pseudo-labeled uniformly; labeled ones are then a tiny share of a large pool)."""
    min_steps: int = Field(200, ge=1)
    """Lower bound on optimizer steps per model (tiny labeled sets would otherwise get a few steps)."""
    max_steps: int = Field(4000, ge=1)
    """Upper bound on optimizer steps per model (keeps rounds on a large pool bounded)."""
    student_init: Literal["scratch", "teacher"] = "scratch"
    """Student starts from random weights (Noisy Student) or from the teacher's weights."""
    augment: bool = True
    """Input augmentation while training: shifts/rotations for images, masking/noise for tables."""
    augment_strength: float = Field(1.0, ge=0.0)
    """Scale of the weak augmentation (1.0 = about 1 pixel shift and 8 degrees on 8x8 digits)."""
    consistency_weight: float = Field(0.0, ge=0.0)
    """FixMatch term inside student training: weight of CE(strong view, pseudo-label of weak view); 0 = off."""
    consistency_threshold: float = Field(0.95, ge=0.0, le=1.0)
    """FixMatch confidence mask on the weakly augmented view."""

    # --- pseudo-labels ------------------------------------------------------------------------
    pseudo_labeler: Literal["teacher", "graph"] = "graph"
    """How pool labels are proposed: the teacher's (augmentation-averaged) softmax, or label
    propagation over a kNN graph of teacher embeddings seeded by the labels (Iscen et al. 2019)."""
    teacher_augmentations: int = Field(0, ge=0)
    """Extra weakly augmented views averaged into the teacher's pool predictions (0 = plain)."""
    graph_features: Literal["embedding", "input", "both"] = "both"
    """Space of the kNN graph: teacher penultimate features, raw input, or both concatenated."""
    graph_k: int = Field(10, ge=1)
    """Neighbours per node of the kNN graph."""
    graph_alpha: float = Field(0.99, gt=0.0, lt=1.0)
    """Diffusion strength alpha in (I - alpha W) Z = Y."""
    graph_teacher_weight: float = Field(0.0, ge=0.0)
    """Weight of the teacher's predictions as soft seeds on pool nodes (0 = labels only)."""
    graph_class_normalization: bool = False
    """Class mass normalization (Zhou et al. 2004): rescale each class's propagated scores so the
    class masses over the pool match the labeled class prior before the rows become probabilities."""
    distribution_alignment: bool = False
    """Rescale pool probabilities so their class mean matches the labeled class prior (ReMixMatch)."""
    threshold_schedule: Literal["linear", "percentile"] = "linear"
    """`linear`: threshold from start to end, minus `threshold_decay` per round; `percentile`:
    accept the top `percentile` % (growing per round) of the pool by confidence."""
    threshold_start: float = Field(0.5, ge=0.5, le=0.99)
    """Confidence threshold of the first round."""
    threshold_end: float = Field(0.5, ge=0.5, le=0.99)
    """Lowest threshold the linear schedule reaches."""
    threshold_decay: float = Field(0.1, ge=0.0)
    """Linear schedule: threshold decrease per round."""
    percentile: float = Field(20.0, gt=0.0, le=100.0)
    """Percentile schedule: share (%) of the pool accepted in the first round, grown by itself each round."""
    classwise_thresholds: bool = False
    """FlexMatch: scale the threshold per class by that class's learning status (confident-count ratio)."""
    weight_by_confidence: bool = True
    """Weight each pseudo-label's loss by its confidence (graph policy: 1 - normalized entropy)."""
    class_balance: bool = False
    """Keep the pseudo-label class distribution near the labeled prior (drop the least confident excess)."""
    max_class_fraction: float = Field(0.5, gt=0.0, le=1.0)
    """No class may take more than this share of the accepted pseudo-labels."""
    balance_slack: float = Field(1.5, ge=1.0)
    """Class balance: a class may exceed its prior share by this factor before being cut."""

    # --- generative models --------------------------------------------------------------------
    generator: Literal["none", "vae", "cvae", "gan", "cgan"] = "none"
    """Generative model trained on labeled + pool data each round."""
    ood_filter: bool = False
    """Reject pool samples the generator finds out-of-distribution (VAE recon error / GAN critic)."""
    ood_quantile: float = Field(0.99, gt=0.5, le=1.0)
    """OOD cut: scores above this quantile of the labeled (in-distribution) scores are rejected."""
    ood_fit: Literal["labeled", "all", "trimmed"] = "trimmed"
    """Generator training set: labeled only, labeled + pool, or `trimmed`: labeled first, then
    continued on labeled + the pool samples that model scores as in-distribution."""
    ood_trim: float = Field(0.05, ge=0.0, lt=1.0)
    """`trimmed`: pool samples scoring above the (1 - ood_trim) quantile of the labels' scores stay
    out of the second fit."""
    denoise: bool = False
    """Train the student on VAE reconstructions of the pseudo-labeled samples (VAE/CVAE only)."""
    synthetic_per_class: int = Field(0, ge=0)
    """Conditional generators: at most this many synthetic samples per under-represented class."""
    use_synthetic: bool = False
    """Add the synthetic samples to the student's training set (else only offered in the report)."""
    measure_synthetic_effect: bool = True
    """When synthetic samples are used, also train a student without them and report both accuracies."""
    generator_epochs: int = Field(30, ge=1)
    """Generator training epochs."""
    latent_size: int = Field(16, ge=1)
    """Generator latent dimension."""
    generator_hidden: int = Field(256, ge=8)
    """Generator hidden layer width (MLP encoder/decoder, generator/critic)."""

    # --- gate, rounds, misc ---------------------------------------------------------------------
    promotion_margin: float = 0.0
    """Student holdout accuracy must be >= teacher's + this margin to be promoted."""
    max_recall_drop: float = Field(0.05, ge=0.0, le=1.0)
    """No class's holdout recall may drop by more than this from teacher to student."""
    rounds: int = Field(4, ge=0)
    """Offline `self_train`: number of rounds after the supervised bootstrap."""
    holdout_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Share of the labeled data split off once (stratified, at least one per class) as the gate's
    holdout when no holdout file is given; never trained on. 0 = no split: the gate then judges on
    the labeled training set, a sanity check only."""
    seed: int = 0
    """Seed of every random choice."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Torch device; `auto` = CUDA when available."""
    torch_threads: int = Field(0, ge=0)
    """torch.set_num_threads for training (0 = leave torch's default)."""
    scaler: Literal["standard", "minmax"] = "standard"
    """Feature scaling used by the data preprocessor (the engine itself gets scaled arrays)."""
    eval_batch_size: int = Field(1024, ge=1)
    """Batch size of inference passes (predict_proba, embeddings)."""

    @model_validator(mode="after")
    def _check_thresholds(self) -> EngineSettings:
        if self.threshold_end > self.threshold_start:
            raise ValueError(f"threshold_end ({self.threshold_end}) must be <= threshold_start ({self.threshold_start})")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> EngineSettings:
        """Settings from a YAML mapping; env vars and `overrides` win over the file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise SettingsError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
        except OSError as exc:
            raise SettingsError(f"{path}: cannot read: {exc.strerror}") from exc
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: expected a mapping of engine options, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise SettingsError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(cls.model_fields)}")
        try:
            # keys set by the environment or by `overrides` win over the file
            upper = cls(**overrides)
            merged = {**data, **{k: getattr(upper, k) for k in upper.model_fields_set}}
            return cls(**merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "settings"
            raise SettingsError(f"{path}: {key}: {err['msg']}") from exc
