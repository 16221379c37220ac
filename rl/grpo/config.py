"""GRPO and optimizer configuration: frozen, typed, validated on construction.

Only types OmegaConf structured configs accept (int, float, str, bool, Optional, tuples). Names of
variants are the keys of the registries beside each estimator, so a new variant needs no edit here. Every
GRPO field cites its paper symbol and source; defaults follow DeepSeek-R1 (Guo et al. 2025, Nature,
Supplementary "Training details of DeepSeek-R1-Zero") unless a later paper is named.
"""

import dataclasses
from typing import Optional

from r1jax.errors import UserError
from r1jax.model.config import DTYPES
from r1jax.rl.grpo.advantages import ADVANTAGE_ESTIMATORS, STD_KINDS
from r1jax.rl.grpo.aggregation import AGGREGATIONS
from r1jax.rl.grpo.kl import KL_ESTIMATORS
from r1jax.rl.grpo.ratios import RATIO_LEVELS
from r1jax.rl.config_checks import INT32_MAX, MAX_TEMPERATURE, MIN_TEMPERATURE

SCHEDULES = ("constant", "warmup_cosine")
# Upper bounds of the loss's scalars: each far past any published setting, each low enough that the loss and its
# gradient stay finite in float32 (kl_coef=1e308 or adv_eps=1e300 made them inf or 0 silently).
MAX_GROUP_SIZE = 65536  # G (R1: 16); rows = prompts_per_step x G are bounded again with the token budget
MAX_PROMPTS_PER_STEP = 1 << 20
MAX_KL_COEF = 100.0  # beta (R1: 0.001)
MAX_ADV_EPS = 1.0  # epsilon of the advantage's std (DeepSeekMath: 1e-6, TRL: 1e-4)
MAX_CLIP = 100.0  # epsilon_high (DAPO: 0.28): a ratio above 101 is clipped whatever it is
MAX_LOGRATIO = 80.0  # exp(88) overflows float32
MAX_PACK_SHAPES = 1024  # packed row counts (a compile each; more than a group's rows changes nothing)
GSPO_CLIP_NOTE = 0.01  # a sequence-level clip wider than this is said to hardly act (GSPO's: 3e-4 / 4e-4)


def _require(ok: bool, section: str, field: str, value: object, expected: str) -> None:
    if not ok:
        raise UserError(f"{section}.{field} = {value!r}: expected {expected}")


def _require_name(section: str, field: str, value: str, names) -> None:
    _require(value in names, section, field, value, f"one of {sorted(names)}")


def _require_band(section: str, name: str, low: Optional[float], high: Optional[float]) -> None:
    """A keep band [low, high] of ratios around 1: 0 < low < 1 < high, either side may be None."""
    _require(low is None or 0 < low < 1, section, f"{name}_low", low, "null or in (0, 1)")
    _require(high is None or high > 1, section, f"{name}_high", high, "null or > 1")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """The GRPO objective and its rollout shape."""

    group_size: int = 16  # G, completions per prompt (R1: 16)
    prompts_per_step: int = 32  # prompts per policy step (R1: 32 questions -> batch 512)
    temperature: float = 1.0  # sampling temperature tau; log-probs are scored at logits / tau (R1: 1.0)
    kl_coef: float = 0.001  # beta, KL-to-reference coefficient (R1: 0.001); 0 skips the reference model
    kl_estimator: str = "k3"  # KL estimator (R1 / DeepSeekMath eq. 4: k3, Schulman 2020)
    ref_reset_every: int = 400  # reference policy <- current policy every N steps (R1: 400); 0 = never
    clip_low: float = 0.2  # epsilon_low, lower ratio clip 1 - eps_low (PPO; R1: 0.2 symmetric; DAPO: 0.2)
    clip_high: float = 0.28  # epsilon_high, upper clip 1 + eps_high (DAPO clip-higher: 0.28; R1 used 0.2).
    # With ratio_level="sequence" use GSPO's own range: clip_low=3e-4, clip_high=4e-4 (GSPO §5.1).
    dual_clip: Optional[float] = None  # c > 1, dual-clip PPO (Ye et al. 2020): loss <= c*|A| when A < 0
    advantage_estimator: str = "grpo"  # "grpo" (R1) | "dr_grpo" (Dr.GRPO, no std) | "batch_std" (Lite PPO)
    # std in the advantage's scale: "population" (ddof 0, the R1 / DeepSeekMath formula as written) |
    # "sample" (ddof 1, Bessel-corrected: TRL's and verl's torch.std; advantages ~3% smaller at G = 16)
    adv_std: str = "population"
    adv_eps: float = 1e-6  # epsilon in (r - mean) / (std + eps) (DeepSeekMath eq. 4; TRL uses 1e-4)
    loss_aggregation: str = "seq_mean_token_mean"  # "seq_mean_token_mean" (GRPO, R1) | "token_mean"
    # (DAPO token-level loss) | "constant" (Dr.GRPO: token sum / (B * max completion length))
    ratio_level: str = "token"  # "token" (PPO/GRPO) | "sequence" (GSPO, length-normalised sequence ratio)
    max_logratio: float = 20.0  # clamp on every log-ratio before exp (numerical guard, not from a paper)
    tis_cap: Optional[float] = None  # C, truncated IS against sampler log-probs (Yao et al. 2025: 2); None off
    # Masks against the sampler (keep in [low, high], None = no bound on that side, both None = off, the
    # default: they drop data, so a run opts in). Masked tokens add 0 to the policy gradient; the loss
    # normalisers are not changed. IcePop token mask on pi_old / pi_sampler per token, the blog's [alpha, beta]
    # (Ling team 2025, "Small Leak Can Sink a Great Ship: Boost RL Training on MoE with IcePop!"). The mask
    # alone keeps a token at weight 1; IcePop's masked importance sampling also weights the tokens it keeps by
    # pi_old / pi_sampler: set tis_cap >= token_mask_high with it (the cap then never binds inside the band).
    token_mask_low: Optional[float] = None
    token_mask_high: Optional[float] = None
    # Sequence mask on the geometric mean exp(mean_t log(pi_old / pi_sampler)) per row (the length-normalised
    # form of the sequence-level masked IS in Liu, Li et al. 2025, "When Speed Kills Stability").
    seq_mask_low: Optional[float] = None
    seq_mask_high: Optional[float] = None
    num_iterations: int = 1  # mu, policy updates per rollout batch (R1 / DeepSeekMath: 1)
    # Pack the update's sequences (prompt + completion) into shared rows, attention kept within each
    # (rl.grpo.packing): the same loss up to float summation order on fewer token slots. Off by default,
    # so a run's numbers stay those of the padded layout.
    pack: bool = False
    pack_length: Optional[int] = None  # packed row length in tokens; null: the padded row length (prompt bucket
    # + max_new_tokens), which packs nothing when every sequence is longer than half of it; a shorter value
    # than a step's padded rows is raised to theirs
    # distinct packed row counts (rows per group rounded up to a multiple of ceil(group rows / pack_shapes)):
    # the update and the reference forward compile once per count and prompt bucket, so up to pack_shapes x
    # len(sampling.prompt_buckets) compiles each over a run; fewer for a large model on a TPU (1: every step
    # keeps the padded row count, so packing saves no rows)
    pack_shapes: int = 8
    dynamic_sampling: bool = False  # DAPO dynamic sampling: resample groups whose rewards are all equal
    # extra sampling rounds a step may draw after its first (DAPO's max_num_gen_batches counts the first too);
    # still short of informative groups after them, the step fills its batch with uninformative ones
    max_resample_rounds: int = 3
    # k, bounded staleness (rl.train.ahead): 0 = on-policy, each batch sampled by the weights it updates;
    # k >= 1: the batch of step n is sampled (and scored on the host) while steps n-k..n-1 update, with the
    # weights of version n-k, and its ratios and sampler corrections are taken against those weights'
    # log-probs (the behaviour policy, as `old_logp` with mu > 1). Not with dynamic_sampling.
    max_staleness: int = 0

    def __post_init__(self) -> None:
        s = "grpo"
        _require(2 <= self.group_size <= MAX_GROUP_SIZE, s, "group_size", self.group_size,
                 f"an integer in [2, {MAX_GROUP_SIZE}]")
        _require(1 <= self.prompts_per_step <= MAX_PROMPTS_PER_STEP, s, "prompts_per_step", self.prompts_per_step,
                 f"an integer in [1, {MAX_PROMPTS_PER_STEP}]")
        _require(MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE, s, "temperature", self.temperature,
                 f"in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]")
        _require(0 <= self.kl_coef <= MAX_KL_COEF, s, "kl_coef", self.kl_coef, f"in [0, {MAX_KL_COEF:g}]")
        _require_name(s, "kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _require(self.ref_reset_every >= 0, s, "ref_reset_every", self.ref_reset_every, ">= 0 (0 = never)")
        _require(0 < self.clip_low < 1, s, "clip_low", self.clip_low, "in (0, 1)")
        _require(0 < self.clip_high <= MAX_CLIP, s, "clip_high", self.clip_high, f"in (0, {MAX_CLIP:g}]")
        _require(self.dual_clip is None or self.dual_clip > 1, s, "dual_clip", self.dual_clip, "None or > 1")
        _require_name(s, "advantage_estimator", self.advantage_estimator, ADVANTAGE_ESTIMATORS)
        _require(0 <= self.adv_eps <= MAX_ADV_EPS, s, "adv_eps", self.adv_eps, f"in [0, {MAX_ADV_EPS:g}]")
        _require_name(s, "adv_std", self.adv_std, STD_KINDS)
        _require_name(s, "loss_aggregation", self.loss_aggregation, AGGREGATIONS)
        _require_name(s, "ratio_level", self.ratio_level, RATIO_LEVELS)
        _require(0 < self.max_logratio <= MAX_LOGRATIO, s, "max_logratio", self.max_logratio,
                 f"in (0, {MAX_LOGRATIO:g}]")
        _require(self.tis_cap is None or self.tis_cap >= 1, s, "tis_cap", self.tis_cap,
                 "None or >= 1 (it truncates pi_old / pi_sampler from above; Yao et al. 2025: 2)")
        _require_band(s, "token_mask", self.token_mask_low, self.token_mask_high)
        _require_band(s, "seq_mask", self.seq_mask_low, self.seq_mask_high)
        _require(self.pack_length is None or self.pack_length >= 2, s, "pack_length", self.pack_length,
                 "null or an integer >= 2")
        _require(type(self.pack_shapes) is int and 1 <= self.pack_shapes <= MAX_PACK_SHAPES, s, "pack_shapes",
                 self.pack_shapes, f"an integer in [1, {MAX_PACK_SHAPES}]")
        _require(self.num_iterations >= 1, s, "num_iterations", self.num_iterations, "an integer >= 1")
        _require(self.max_resample_rounds >= 0, s, "max_resample_rounds", self.max_resample_rounds, ">= 0")
        _require(type(self.max_staleness) is int and self.max_staleness >= 0, s, "max_staleness",
                 self.max_staleness, "an integer >= 0 (0: on-policy)")
        # DAPO's resampling rounds score each round before the next is drawn: nothing left to overlap
        _require(not (self.max_staleness and self.dynamic_sampling), s, "max_staleness", self.max_staleness,
                 "0 with grpo.dynamic_sampling: true")

    def notes(self) -> list[str]:
        """Settings that run but likely do not do what was meant (said once at the stage's start)."""
        notes, widest = [], max(self.clip_low, self.clip_high)
        if self.ratio_level == "sequence" and widest > GSPO_CLIP_NOTE:
            notes.append(f"grpo.ratio_level=sequence with clip_low={self.clip_low:g}, clip_high={self.clip_high:g}: "
                         "a sequence's ratio is the geometric mean of its tokens' ratios and seldom leaves 1 +- "
                         f"{widest:g}, so the clip will hardly act; GSPO clips at 3e-4 / 4e-4 (grpo.clip_low=3e-4 "
                         "grpo.clip_high=4e-4)")
        if self.pack_length is not None and not self.pack:
            notes.append(f"grpo.pack_length={self.pack_length} with grpo.pack=false: nothing is packed "
                         "(grpo.pack=true packs)")
        if self.pack_shapes != type(self).pack_shapes and not self.pack:
            notes.append(f"grpo.pack_shapes={self.pack_shapes} with grpo.pack=false: nothing is packed "
                         "(grpo.pack=true packs)")
        return notes

    @property
    def corrects_sampler(self) -> bool:
        """True when the loss reads the sampler's log-probs: TIS or a token / sequence mask is on."""
        bounds = (self.token_mask_low, self.token_mask_high, self.seq_mask_low, self.seq_mask_high)
        return self.tis_cap is not None or any(b is not None for b in bounds)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a learning-rate schedule, global-norm clipping and skipping of non-finite updates."""

    lr: float = 3e-6  # peak learning rate (R1: 3e-6)
    schedule: str = "constant"  # "constant" (R1) | "warmup_cosine"; both start with a linear warmup
    # the schedule counts optimizer updates (GRPO's mu = num_iterations of them a step; a skipped one not)
    warmup_steps: int = 0  # linear warmup: lr * (step + 1) / warmup_steps for step < warmup_steps
    total_steps: Optional[int] = None  # end of the cosine decay, warmup included; None: the stage's updates
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    b1: float = 0.9  # Adam beta_1 (DeepSeek-V3 §4.2: 0.9)
    b2: float = 0.95  # Adam beta_2 (DeepSeek-V3 §4.2: 0.95)
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float = 0.1  # decoupled weight decay (DeepSeek-V3 §4.2: 0.1)
    # false: 1-D parameters (norm scales) take no weight decay, as Megatron and HF's Trainer have it; true: every
    # parameter decays (optax.adamw's own rule)
    decay_norms: bool = True
    grad_clip_norm: Optional[float] = 1.0  # global-norm clip (DeepSeek-V3 §4.2: 1.0); None = no clipping
    max_consecutive_skips: int = 5  # the trainer halts after this many non-finite updates in a row
    # dtype of Adam's moments (mu and nu): float32 | bfloat16; null: the parameters' dtype (optax's own rule)
    state_dtype: Optional[str] = None

    def __post_init__(self) -> None:
        s = "optimizer"
        _require(self.lr > 0, s, "lr", self.lr, "> 0")
        _require(self.schedule in SCHEDULES, s, "schedule", self.schedule, f"one of {list(SCHEDULES)}")
        _require(0 <= self.warmup_steps <= INT32_MAX, s, "warmup_steps", self.warmup_steps, "in [0, 2^31-1]")
        _require(self.total_steps is None or 1 <= self.total_steps <= INT32_MAX, s, "total_steps",
                 self.total_steps, "null (each stage's updates) or an integer in [1, 2^31-1] (counted in int32)")
        if self.schedule == "warmup_cosine":
            ok = self.total_steps is None or self.total_steps > self.warmup_steps  # None: each stage's steps
            _require(ok, s, "total_steps", self.total_steps, "null or an integer > warmup_steps for warmup_cosine")
        else:  # the constant schedule reads no end: one set here was accepted and ignored
            _require(self.total_steps is None, s, "total_steps", self.total_steps,
                     "null with schedule=constant (only warmup_cosine decays to an end)")
        _require(0 <= self.min_lr_ratio <= 1, s, "min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        _require(0 <= self.b1 < 1, s, "b1", self.b1, "in [0, 1)")
        _require(0 <= self.b2 < 1, s, "b2", self.b2, "in [0, 1)")
        _require(self.eps > 0, s, "eps", self.eps, "> 0")
        _require(self.weight_decay >= 0, s, "weight_decay", self.weight_decay, ">= 0")
        _require(type(self.decay_norms) is bool, s, "decay_norms", self.decay_norms, "true or false")
        clip = self.grad_clip_norm
        _require(clip is None or clip > 0, s, "grad_clip_norm", clip, "None or > 0")
        _require(self.max_consecutive_skips >= 1, s, "max_consecutive_skips", self.max_consecutive_skips, ">= 1")
        _require(self.state_dtype is None or self.state_dtype in DTYPES, s, "state_dtype", self.state_dtype,
                 f"null or one of {list(DTYPES)}")
