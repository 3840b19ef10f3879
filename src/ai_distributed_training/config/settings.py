"""One typed, validated config tree: model spec, synthetic data spec and training settings.

Every default lives here and nowhere else. Unknown keys are errors that name the key (and the
closest valid one); every bad value is reported as :class:`~.errors.ConfigError` naming the value
and what is accepted, before any worker starts.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError, ConfigTypeError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
PositiveInt = Annotated[int, Field(gt=0)]
#: The largest seed: seeds are offset by rank and step, and torch's must fit 64 bits.
MAX_SEED = 2**62
#: The longest timeout a setting takes (a week): a longer one means "never", which hangs.
MAX_TIMEOUT_S = 7 * 24 * 3600.0


class StrictModel(BaseModel):
    """Base of every config model: no coercion of types, no unknown keys."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        arbitrary_types_allowed=True,
        allow_inf_nan=False,  # inf and NaN are never a meaningful setting
    )


class ModelSpec(StrictModel):
    """A built-in architecture; input and output sizes are inferred from the data."""

    model_name: str = Field(min_length=1, description="Label for the model, echoed in results.")
    architecture: Literal["mlp", "linear", "transformer"] = Field(
        "mlp",
        description="Built-in architecture: 'mlp', 'linear', or 'transformer' (a GPT-style "
        "decoder for token data).",
    )
    hidden_sizes: list[PositiveInt] = Field(
        default_factory=lambda: [512, 512],
        description="Widths of the MLP's hidden layers (positive integers).",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
    activation: Literal["relu", "gelu", "tanh"] = Field(
        "relu", description="Activation after each hidden layer."
    )
    d_model: PositiveInt = Field(128, description="Transformer: width of the token vectors.")
    layers: PositiveInt = Field(2, description="Transformer: number of decoder blocks.")
    heads: PositiveInt = Field(4, description="Transformer: attention heads (divide d_model).")
    activation_checkpointing: bool = Field(
        False,
        description="Transformer: recompute each block's activations in the backward pass "
        "instead of keeping them (less memory, ~1/3 more compute).",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelSpec:
        if self.architecture == "transformer" and self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of heads={self.heads}")
        return self


class SyntheticDataSpec(StrictModel):
    """A deterministic, learnable synthetic dataset: labels come from a fixed random teacher."""

    samples: int = Field(gt=0, description="Number of samples (positive integer).")
    features: int = Field(gt=0, description="Number of input features (positive integer).")
    classes: int = Field(2, ge=2, description="Number of classes for classification (>= 2).")
    task: Literal["classification", "regression"] = Field(
        "classification", description="'classification' or 'regression'."
    )
    seed: int = Field(0, ge=0, description="Seed of the data and its labelling teacher (>= 0).")


class TokenDataSpec(StrictModel):
    """Synthetic token sequences (a fixed random bigram chain) for language models."""

    samples: int = Field(gt=0, description="Number of sequences (positive integer).")
    seq_len: int = Field(gt=0, description="Tokens per sequence (positive integer).")
    vocab_size: int = Field(ge=2, description="Token ids are 0..vocab_size-1 (>= 2).")
    seed: int = Field(0, ge=0, description="Seed of the chain and the sequences (>= 0).")


class FaultSpec(StrictModel):
    """One injected fault, to rehearse failures: it fires once, in one attempt of the job."""

    kind: Literal["kill", "raise", "hang", "nan"] = Field(
        description="'kill' (SIGKILL), 'raise' (an exception), 'hang' (stuck), 'nan' (NaN loss)."
    )
    rank: int = Field(0, ge=0, description="Global rank that misbehaves.")
    step: int = Field(1, gt=0, description="Global optimizer step (1-based) it happens at.")
    attempt: int = Field(
        0, ge=0, description="Which attempt of the job (0: the first; n: after n restarts)."
    )
    delay_s: float = Field(
        0.0,
        ge=0.0,
        description="'kill' only: fire this many seconds after the step begins instead of "
        "before it, from a timer, so it lands at any moment (in forward or backward, in an "
        "all-reduce, in a checkpoint save).",
    )

    @model_validator(mode="after")
    def _delay_kills_only(self) -> FaultSpec:
        if self.delay_s and self.kind != "kill":
            raise ValueError(f"delay_s applies to kind='kill' only, not kind={self.kind!r}")
        return self


class TrainingSettings(StrictModel):
    """Training settings accepted by the constructor and by ``train_distributed``."""

    nodes: int = Field(
        3,
        gt=0,
        description="Number of worker processes, all hosts together (positive integer); 3, as "
        "in the documented train_distributed(model, data, nodes=3), when not given.",
    )
    epochs: int = Field(2, gt=0, description="Passes over the training split.")
    batch_size: int = Field(
        1024, gt=0, description="GLOBAL batch: samples per optimizer step, across all workers."
    )
    learning_rate: float = Field(1e-3, gt=0.0, description="Optimizer learning rate.")
    optimizer: (
        Literal["adamw", "adam", "sgd"]
        | Callable[..., Any]
        | dict[str, Literal["adamw", "adam", "sgd"] | Callable[..., Any]]
    ) = Field(
        "adamw",
        description="'adamw', 'adam', 'sgd' (with momentum), or a factory "
        "optimizer(params) -> torch.optim.Optimizer; with a dict of models, a dict of those "
        "keyed like the models (one value: the same kind for each model).",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum of 'sgd'.")
    weight_decay: float = Field(0.0, ge=0.0, description="Weight decay of the optimizer.")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of model init and per-epoch shuffling (0..2**62)."
    )
    gradient_accumulation_steps: int = Field(
        1,
        gt=0,
        description="Micro-batches per optimizer step on each worker (gradients are "
        "synchronized on the last one only); batch_size stays the global batch per step.",
    )
    drop_last: bool = Field(
        False,
        description="Drop each epoch's last global batch when it is smaller than batch_size "
        "(then every step trains on a full global batch; BatchNorm needs >= 2 samples per "
        "worker).",
    )
    max_grad_norm: float | None = Field(
        None, gt=0.0, description="Clip the global (synchronized) gradient norm to this value."
    )
    scheduler: Callable[..., Any] | dict[str, Callable[..., Any]] | None = Field(
        None,
        description="scheduler(optimizer) -> torch.optim.lr_scheduler.LRScheduler, stepped once "
        "per optimizer step, in place of lr_schedule; with a dict of models, a dict of those "
        "keyed like the models.",
    )
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant",
        description="Learning-rate schedule over all optimizer steps, after warmup: "
        "'constant', 'linear' (to 0) or 'cosine' (to 0).",
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="Steps of linear warmup from 0 (exclusive with warmup_ratio)."
    )
    warmup_ratio: float | None = Field(
        None, ge=0.0, lt=1.0, description="Warmup as a fraction of all optimizer steps."
    )
    task: Literal["classification", "regression"] | None = Field(
        None,
        description="Default: inferred from the targets (integers: classification, "
        "floats: regression).",
    )
    target: str | int | None = Field(
        None,
        description="A .csv table's target column, by header name or 0-based index (negative "
        "from the end); default: the column named target, label, labels, y or class (a header "
        "with none of them is refused), or the last column of a table without a header.",
    )
    num_classes: int | None = Field(
        None,
        ge=2,
        description="Classes of a classification Dataset without a targets attribute; default: "
        "counted from 256 of its labels, spread over it (never the whole Dataset).",
    )
    validation_data: Any = Field(
        None, description="Validation set in any form data accepts; replaces validation_split."
    )
    eval_every: int | None = Field(
        None, gt=0, description="Also validate every this many steps (always after each epoch)."
    )
    metrics: dict[str, Callable[..., Any]] = Field(
        default_factory=dict,
        description="{name: fn(outputs, targets) -> per-sample tensor "
        "[batch]}, reported as train_<name> and val_<name> (means over every sample); "
        "targets as loss_fn gets them.",
    )
    deterministic: bool = Field(
        False,
        description="Deterministic algorithms only (and cuDNN/cuBLAS settings on GPU): "
        "repeated runs are bitwise identical.",
    )
    validation_split: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of samples held out for validation."
    )
    loss_fn: Callable[..., Any] | None = Field(
        None,
        description="loss_fn(outputs, targets) -> the batch's mean loss, or a (sum, count) "
        "pair; targets: a tuple batch's last element, or the whole batch for a dict batch. "
        "Default: the model's own outputs.loss, else cross-entropy (classification; targets "
        "of -100 ignored) or MSE (regression).",
    )
    train_step: Callable[..., Any] | None = Field(
        None,
        description="train_step(ctx, batch) -> {name: loss or (sum, count)}: your own body of "
        "one optimizer step (ctx.models, ctx.backward, ctx.step(name), ...); needed for a dict "
        "of models.",
    )
    max_steps: int | None = Field(
        None,
        gt=0,
        description="Stop after this many optimizer steps (all epochs together), even mid-epoch; "
        "the LR schedule spans them.",
    )
    stream_sharding: Literal["auto", "shard", "worker_info", "global"] = Field(
        "auto",
        description="How the workers split a stream (IterableDataset): 'shard' (its "
        "shard(rank, world_size)), 'worker_info' (it splits itself by get_worker_info(), each "
        "worker seen as loader worker <rank> of <nodes>), 'global' (every worker reads it all "
        "and keeps its slice); 'auto': shard if it has shard(), else global.",
    )
    forward: Callable[..., Any] | None = Field(
        None,
        description="forward(model, batch) -> outputs; default: model(**batch) for a dict "
        "batch (less the keys the model's forward does not take, e.g. the target), "
        "model(*batch[:-1]) for a tuple batch, model(batch) for a tensor.",
    )
    count_fn: Callable[..., Any] | None = Field(
        None,
        description="count_fn(batch) -> the number of items the batch's mean loss is over "
        "(e.g. valid tokens); the step weights each rank by the global count. Default: valid "
        "labels (not -100) of per-position targets, else samples.",
    )
    collate_fn: Callable[..., Any] | None = Field(
        None,
        description="collate_fn(list of samples) -> batch, for a Dataset (e.g. padding "
        "sequences; a Hugging Face data collator works); default: default_collate, or the "
        "DataLoader's own.",
    )
    dry_run: bool = Field(
        True,
        description="Check the model (or the train_step) on two samples in the caller before "
        "any worker starts, on copies (the caller's objects stay as they were); skipped where "
        "only the workers' environment can run it. False: leave every check to the workers.",
    )
    compile: bool | str = Field(
        False,
        description="torch.compile the model: True (the inductor backend; on CPU it needs a C++ "
        "compiler) or a torch.compile backend name ('aot_eager': no code generation, for quick "
        "checks). Under FSDP each block is compiled on its own. Off by default.",
    )
    strategy: Literal["ddp", "fsdp", "tp", "fsdp+tp", "auto"] = Field(
        "ddp",
        description="'ddp': a full replica per worker; 'fsdp': parameters, gradients and "
        "optimizer state sharded across workers (FSDP2); 'tp': every worker holds a slice of "
        "each large matrix and all compute one replica together (tensor parallelism); "
        "'fsdp+tp': groups of tp_size workers do tensor parallelism, FSDP shards over the "
        "groups; 'auto': fsdp when the estimated replica does not fit a worker's memory.",
    )
    tp_size: PositiveInt | None = Field(
        None,
        description="'fsdp+tp': workers per tensor-parallel group, a divisor of nodes "
        "(usually the GPUs of one host); FSDP shards over the nodes/tp_size groups. 'tp': all "
        "workers (the default).",
    )
    tp_plan: dict[str, Literal["colwise", "rowwise"]] | None = Field(
        None,
        description="'tp'/'fsdp+tp': which Linear layers are split, by module-name pattern "
        "(fnmatch: '*' matches any characters): 'colwise' splits outputs, 'rowwise' inputs "
        "(Megatron: q/k/v and the MLP's first layer colwise, the attention output and the "
        "MLP's second layer rowwise). Default: the built-in transformer's, or a Hugging Face "
        "model's config.base_model_tp_plan.",
    )
    find_unused_parameters: bool = Field(
        False,
        description="DDP: let parameters go unused in some steps' forward (DDP's option, at "
        "some cost per step); without it a parameter unused in forward is an error naming it.",
    )
    sync_batchnorm: bool = Field(
        False,
        description="GPUs: BatchNorm statistics over the whole global batch "
        "(SyncBatchNorm); otherwise each worker normalizes with its own share's statistics.",
    )
    fsdp_blocks: list[str] | None = Field(
        None,
        description="Class names of the modules FSDP shards and gathers one at a time (e.g. "
        "['DecoderBlock']). Default: the built-in architecture's layers; a user model is one unit.",
    )
    cpu_offload: bool = Field(
        False,
        description="FSDP on GPUs: keep the sharded parameters, gradients and optimizer state "
        "in host memory (FSDP2's CPUOffloadPolicy), each block copied to its GPU for its "
        "forward and backward; the optimizer steps on the CPU. Needs strategy='fsdp' and GPUs.",
    )
    activation_checkpointing: list[str] | None = Field(
        None,
        description="Class names of the modules whose activations are recomputed in the "
        "backward pass instead of kept (any model, e.g. ['DecoderBlock'], a Hugging Face "
        "model's ['GPT2Block']): less memory for ~1/3 more compute, the same weights.",
    )
    use_gpus: bool = Field(False, description="Train on CUDA GPUs with NCCL, one per worker.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="'auto' (bf16 autocast on GPUs that support it, else fp32), 'fp32', "
        "'bf16' (autocast, on CPU too) or 'fp16' (GPU only, with a gradient scaler).",
    )
    threads_per_worker: int | None = Field(
        None, gt=0, description="Intra-op threads per worker; default max(1, cores // nodes)."
    )
    cpu_affinity: bool = Field(
        True,
        description="Pin each CPU worker our launcher starts to its own share of the cores "
        "(Linux; ~10% faster at nodes=2 on 2 cores). GPU workers and ranks of a torchrun job "
        "keep their launcher's placement (torchrun --numa-binding binds by GPU).",
    )
    collective_timeout_s: float = Field(
        300.0,
        gt=0.0,
        le=MAX_TIMEOUT_S,
        description="A collective that waits longer than this fails the job (seconds, at most "
        "a week).",
    )
    nnodes: int = Field(
        1,
        gt=0,
        description="Hosts in the job (torchrun's --nnodes); nodes is the total worker count, "
        "split evenly across them. Every host runs the same command with its node_rank.",
    )
    node_rank: int = Field(0, ge=0, description="This host's index, 0..nnodes-1.")
    rdzv_endpoint: str | None = Field(
        None,
        description="HOST:PORT of the rendezvous, served by host 0 (node_rank=0); needed when "
        "nnodes > 1.",
    )
    local_addr: str | None = Field(
        None,
        description="This host's address as the other hosts reach it; also picks the network "
        "interface gloo uses (GLOO_SOCKET_IFNAME) when that is not set.",
    )
    rdzv_timeout_s: float = Field(
        120.0,
        gt=0.0,
        le=MAX_TIMEOUT_S,
        description="How long hosts wait for every host to join the job (seconds, at most a week).",
    )
    launcher: Literal["elastic", "ray"] = Field(
        "elastic",
        description="Who creates the workers: 'elastic' (torch elastic, torchrun's agent, on "
        "this host or with nnodes over several) or 'ray' (Ray Train's workers on a Ray "
        "cluster; pip install 'ai-distributed-training[ray]').",
    )
    ray_address: str | None = Field(
        None,
        description="launcher='ray': the cluster to join ('auto', 'HOST:6379', "
        "'ray://HOST:10001'); None: the one this process is connected to, RAY_ADDRESS, else a "
        "new local Ray instance.",
    )
    ray_storage_path: str | None = Field(
        None,
        description="launcher='ray': Ray Train's storage (run records, the checkpoints it "
        "lists); shared storage or a URI on a multi-host cluster. None: the run directory.",
    )
    runs_dir: str | None = Field(
        "runs",
        description="Where each run writes its directory <timestamp>-<model_name>/ "
        "(config, metrics, summary, weights, events, report); None writes none.",
    )
    log_every_steps: int = Field(
        50, gt=0, description="Write a rank-aggregated step record every this many steps."
    )
    progress: Literal["auto", "bar", "lines", "off"] = Field(
        "auto",
        description="'bar' (a live bar), 'lines' (periodic lines), 'off', or 'auto': a "
        "bar when standard error is a terminal, else off (the CLI: lines).",
    )
    tensorboard: bool = Field(
        False, description="Also write TensorBoard event files into the run directory."
    )
    trackers: list[Any] = Field(
        default_factory=list,
        description="Where the metrics are also logged, from global rank 0, with the values of "
        "metrics.jsonl: 'csv' (metrics.csv), 'tensorboard', 'mlflow' (mlflow-skinny), "
        "'wandb' (offline unless configured), or your MetricLogger objects.",
    )
    tracker_project: str | None = Field(
        None,
        min_length=1,
        description="trackers: the MLflow experiment / W&B project to log into; None: the "
        "model's name.",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        min_length=1,
        description="trackers=['mlflow']: where to log; None: MLFLOW_TRACKING_URI, else a "
        "SQLite database beside the runs (sqlite:///<runs_dir>/mlflow.db).",
    )
    wandb_mode: Literal["offline", "online", "disabled"] | None = Field(
        None,
        description="trackers=['wandb']: None: WANDB_MODE if set, else 'offline' (files in the "
        "run directory; `wandb sync` uploads them).",
    )
    watch: bool = Field(
        False,
        description="Serve the live page of this run (state, loss, per-worker figures, "
        "restarts, events) while it trains, printing its address; needs a run directory. "
        "`adt watch` serves the same page from another terminal.",
    )
    watch_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="watch=True: the address the page is served on; another than loopback "
        "opens it to whoever reaches that address (a warning says so).",
    )
    watch_port: int = Field(
        0, ge=0, le=65535, description="watch=True: the page's port; 0 picks a free one."
    )
    callbacks: list[Any] = Field(
        default_factory=list,
        description="Callback objects (see ai_distributed_training.Callback), called on every "
        "rank; must be picklable.",
    )
    checkpoint_dir: str | None = Field(
        None,
        description="Checkpoint directory; default <run_dir>/checkpoints (none without a "
        "run directory).",
    )
    checkpoint_every: int | None = Field(
        None, gt=0, description="Also checkpoint every this many steps (always at epoch ends)."
    )
    keep_checkpoints: int = Field(3, gt=0, description="Newest checkpoints kept on disk.")
    resume: str | None = Field(
        None,
        description="'auto' (newest valid checkpoint in checkpoint_dir, if any) or a "
        "checkpoint file path; restarted workers always resume automatically.",
    )
    allow_data_change: bool = Field(
        False,
        description="Continue from a checkpoint (resume, or a restart) although a data file "
        "changed since it was written (size, modification time or sampled contents); "
        "recorded in events.log. Off: such a resume is refused, naming the file.",
    )
    init_from: str | None = Field(
        None,
        description="Start from these weights: a .safetensors file or a folder of them "
        "(Hugging Face's layout), or a checkpoint of this library (step-*.pt, step-*.dcp; its "
        "weights only). Under FSDP each worker reads only its shards. Checked against the "
        "model (names, shapes) before any worker starts; a resumed run ignores it.",
    )
    result_weights: Literal["auto", "module", "safetensors"] = Field(
        "auto",
        description="'module': result.model is the trained nn.Module, gathered whole. "
        "'safetensors': the weights stay on disk, in <run_dir>/model (else "
        "<checkpoint_dir>/model): a Hugging Face-style safetensors export written shard by "
        "shard, beside each rank's shards, which load at any number of workers; result.model "
        "loads them on first use. 'auto': 'safetensors' under FSDP when the full weights "
        "would take more than half of the caller's free memory, else 'module'.",
    )
    max_restarts: int = Field(
        3,
        ge=0,
        description="Times all workers are restarted after one fails (the elastic agent's "
        "max_restarts; under Ray, fits of the run again); an error that would repeat (raised "
        "without a newer checkpoint) is not retried, except across hosts.",
    )
    skip_nonfinite_steps: bool = Field(
        False,
        description="Skip (on every rank together) a step whose loss is NaN/inf "
        "instead of failing the job.",
    )
    fault_injection: list[FaultSpec] = Field(
        default_factory=list,
        description="Faults to inject, e.g. [{kind: kill, rank: 1, "
        "step: 5}]; for rehearsing recovery.",
    )
    log_level: LogLevel | None = Field(
        None,
        description="Level of the workers' log lines; default: the caller's level for this "
        "library's logger if logging is configured, else WARNING.",
    )


def settings_markdown_table() -> str:
    """The README's settings table, generated from :class:`TrainingSettings` (so it cannot
    drift from the code)."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for name, field in TrainingSettings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "see meaning" if name == "threads_per_worker" else repr(default)
        meaning = str(field.description).replace("|", "\\|")
        rows.append(f"| `{name}` | `{shown}` | {meaning} |")
    return "\n".join(rows)


_M = TypeVar("_M", bound=StrictModel)

_TYPE_ERRORS = {
    "int_type",
    "float_type",
    "bool_type",
    "string_type",
    "literal_error",
    "callable_type",
    "tuple_type",
    "list_type",
    "dict_type",
    "is_instance_of",
}


def validate(model: type[_M], values: Mapping[str, Any], what: str) -> _M:
    """Build ``model`` from ``values``, turning pydantic's errors into one clear ConfigError.

    ``what`` names the thing being validated in the message (e.g. ``"setting"``).
    """
    try:
        return model.model_validate(dict(values))
    except ValidationError as err:
        raise _config_error(model, err, what) from None


def _config_error(model: type[StrictModel], err: ValidationError, what: str) -> ConfigError:
    known = list(model.model_fields)
    problems: list[str] = []
    is_type_error = False
    for e in err.errors():
        name = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown {what} {name!r}{hint}; known: {', '.join(known)}")
            continue
        if e["type"] == "missing":
            problems.append(f"{what} {name!r} is required")
            continue
        top = str(e["loc"][0]) if e["loc"] else ""
        field = model.model_fields.get(top)
        accepted = f" Accepted: {field.description}" if field and field.description else ""
        is_type_error |= e["type"] in _TYPE_ERRORS
        problems.append(f"{what} {name}={e['input']!r} is invalid: {e['msg']}.{accepted}")
    cls = ConfigTypeError if is_type_error else ConfigError
    return cls("; ".join(problems))


def settings_as_plain_data(settings: TrainingSettings) -> dict[str, Any]:
    """The settings as YAML/JSON-safe data: functions and callbacks become descriptive names."""
    out: dict[str, Any] = {}
    for name in TrainingSettings.model_fields:
        value = getattr(settings, name)
        if name == "callbacks":
            value = [type(cb).__name__ for cb in value]
        elif name == "trackers":
            value = [t if isinstance(t, str) else type(t).__name__ for t in value]
        elif name == "metrics":
            value = {k: f"<function {getattr(f, '__qualname__', '?')}>" for k, f in value.items()}
        elif name == "validation_data" and value is not None and not isinstance(value, str):
            value = f"<{type(value).__name__}>"
        elif name == "fault_injection":
            value = [f.model_dump() for f in value]
        elif name in ("optimizer", "scheduler") and isinstance(value, dict):
            value = {k: _plain_callable(v) for k, v in value.items()}
        else:
            value = _plain_callable(value)
        out[name] = value
    return out


def _plain_callable(value: Any) -> Any:
    """A function as a descriptive name; anything else as it is."""
    if callable(value):
        return f"<function {getattr(value, '__qualname__', type(value).__name__)}>"
    return value
