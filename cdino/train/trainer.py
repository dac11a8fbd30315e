"""The one training loop of cdino.

Every stage that trains (DINO, cluster-aware DINO, pseudo-label rounds, the supervised
reference) is a :class:`~cdino.methods.base.Method` plugged into :class:`Trainer`. The
same code runs as one CPU process and as many ranks under ``torchrun``:

- the **global batch** is fixed in the config; each rank takes ``global_batch / world``
  samples of a step, in ``accum`` micro-batches (gradient accumulation), so results do
  not depend on the number of GPUs;
- bf16 autocast on CUDA and on CPUs with native bf16 (``trainer.precision: fp32`` forces
  exact fp32); fbank and augmentation run on the device, in fp32;
- no host synchronisation in the hot loop: scalars are accumulated on the device and
  read every ``log_every`` steps; non-finite steps are dropped on the device and counted;
- checkpoints are atomic, every ``checkpoint_every`` steps and at each epoch end;
  ``resume`` continues from the newest readable one exactly (model, method state,
  optimiser, step; sampler positions and crops are functions of seed/epoch/step);
- progress bar (loss, lr, utterances/s), TensorBoard scalars and a plain-text log.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from cdino.allocator import keep_freed_memory
from cdino.console import progress_bar, progress_enabled
from cdino.config import save_config, to_dict
from cdino.data.kaldi_dir import DataDir
from cdino.data.loader import BatchFeed, GlobalBatchSampler
from cdino.data.stores import DataConfig, open_store
from cdino.errors import CdinoError, ConfigError, TrainingError
from cdino.frontend.augment import AugmentBanks, AugmentConfig
from cdino.frontend.fbank import FbankConfig
from cdino.methods.base import FeatureFrontend, Method, MethodContext
from cdino.methods.cluster_aware import ClusterAwareConfig
from cdino.methods.dino import DinoConfig
from cdino.methods.pseudo_label import PseudoLabelConfig
from cdino.models.inference import fast_bf16
from cdino.models.registry import EncoderConfig
from cdino.threads import ThreadGovernor, apply_threads, available_cores, ranks_on_node
from cdino.testing.faults import fault_point
from cdino.train import checkpoint as ckpt
from cdino.train.running_stats import RunningStatsSync
from cdino.distributed import DistInfo, all_reduce_mean, init_distributed, resolve_device
from cdino.methods.schedules import cosine, warmup_cosine


@dataclass
class OptimConfig:
    """Optimiser and its schedules."""

    name: Literal["sgd", "adamw"] = "sgd"  # SGD with momentum (DINO recipe) or AdamW (small CPU runs)
    lr: float = 0.2  # peak learning rate for a global batch of 256 (scaled linearly if lr_scale_with_batch)
    lr_scale_with_batch: bool = True  # peak lr = lr * global_batch / 256
    final_lr: float = 5e-5  # end of the cosine decay
    warmup_epochs: float = 20.0  # linear warm-up length (epochs, may be fractional)
    weight_decay: float = 5e-5  # on weights of >= 2 dims; never on biases and norms
    final_weight_decay: float | None = None  # cosine weight-decay schedule end (None: constant)
    momentum: float = 0.9  # SGD momentum
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    grad_clip: float = 3.0  # max global gradient norm (0 disables)


@dataclass
class TrainerConfig:
    """The loop: length, batch, precision, logging and checkpoints."""

    epochs: int = 150  # training epochs
    steps_per_epoch: int = 0  # 0: one pass over the training utterances per epoch
    global_batch: int = 128  # utterances per optimiser step, summed over all ranks
    micro_batch: int = 0  # utterances per rank per forward pass; 0: global_batch / world_size
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto/bf16: bf16 autocast on CUDA and on CPUs with AVX512-BF16/AMX, else fp32; fp32: exact fp32
    tf32: bool = True  # precision fp32 on CUDA: matmuls and convolutions on TF32 tensor cores (fp32 range and sums, 10-bit mantissa inputs; several times faster); false: IEEE fp32. CPUs and bf16 runs are not affected
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads per process (0: auto, the cores it may use / ranks on the node; CDINO_THREADS overrides)
    log_every: int = 20  # steps between log lines / host reads of the logged scalars
    checkpoint_every: int = 0  # steps between checkpoints (0: only at epoch ends)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    average_last: int = 1  # export the average of the last K epoch-end checkpoints' encoders
    seed: int = 0  # seeds crops, augmentation, initialisation
    compile: bool = False  # torch.compile the student (optional; off by default)
    max_nonfinite: int = 20  # stop after this many non-finite losses in one log window
    progress: bool = True  # progress bar
    tensorboard: bool = True  # TensorBoard scalars under EXP/tb


@dataclass
class NoiseConfig:
    """Where augmentation noises and room responses come from."""

    musan: str | None = None  # folder written by `cdino prepare musan` (None: built-in simulated noises)
    rirs: str | None = None  # folder written by `cdino prepare rirs` (None: built-in simulated rooms)
    seed: int = 0  # seed of the simulated banks


@dataclass
class TrainConfig:
    """Everything a training run needs; YAML files hold only overrides of these defaults."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    fbank: FbankConfig = field(default_factory=FbankConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    cluster_aware: ClusterAwareConfig = field(default_factory=ClusterAwareConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)


_BANKS: dict[tuple, AugmentBanks] = {}


def build_banks(cfg: NoiseConfig) -> AugmentBanks:
    """Noise and room-response banks (kept for the process: every stage reuses them)."""
    key = (cfg.musan, cfg.rirs, cfg.seed)
    if key not in _BANKS:
        if cfg.musan or cfg.rirs:
            _BANKS[key] = AugmentBanks.from_dirs(cfg.musan, cfg.rirs)
        else:
            _BANKS[key] = AugmentBanks.simulated(seed=cfg.seed)
    return _BANKS[key]


def check_writable(folder: Path) -> None:
    """Fail before any work when the output folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise CdinoError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None


class RunLog:
    """Plain-text log (EXP/train.log) + optional TensorBoard, rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.file = open(out_dir / "train.log", "a") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except Exception:  # tensorboard missing or broken: text log only
                self.tb = None

    def __call__(self, text: str) -> None:
        if self.file:
            self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            self.file.flush()

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


def _param_groups(module: nn.Module) -> list[dict]:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False}]


@contextlib.contextmanager
def cuda_tf32(enabled: bool):
    """CUDA's fp32 matmuls and convolutions on TF32 tensor cores (``enabled``) or in IEEE
    fp32, restored on exit. The legacy flags (``allow_tf32``) are the ones cdino sets
    everywhere: torch refuses to read a precision set through both them and the newer
    ``fp32_precision`` settings."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


MAX_AUTO_WORKERS = 8  # workers only read crops (augmentation and fbank run on the device)


def loader_workers(configured: int, device: torch.device, cores: int | None = None,
                   ranks: int | None = None) -> int:
    """DataLoader workers per rank for ``data.num_workers``: the number given, or for -1
    (auto) none on a CPU (its cores compute the steps) and on CUDA the cores per rank
    less the one that drives the GPU, at most :data:`MAX_AUTO_WORKERS`, at least 1."""
    if configured >= 0:
        return configured
    if configured != -1:
        raise ConfigError(f"data.num_workers: {configured} (use -1 for auto, 0 for none, or a count)")
    if device.type != "cuda":
        return 0
    cores = available_cores() if cores is None else cores
    share = cores // (ranks_on_node() if ranks is None else ranks)
    return max(1, min(MAX_AUTO_WORKERS, share - 1))


def _buffer_sync(forward: bool) -> dict:
    """DDP's option for copying rank 0's buffers before each forward (``forward_sync_buffers``
    since torch 2.13, ``broadcast_buffers`` before)."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": forward}


class Trainer:
    """Runs one method for the configured epochs; writes checkpoints under ``out_dir``."""

    def __init__(self, cfg: TrainConfig, method: Method, data: DataDir, out_dir: Path,
                 resume: bool = False, store=None) -> None:
        self.cfg, self.method, self.data = cfg, method, data
        self.out_dir = Path(out_dir)
        self.resume = resume
        tc = cfg.trainer
        keep_freed_memory()  # freed activations stay in the heap for the next step (cdino/allocator.py)
        self.threads = apply_threads(tc.threads)  # CDINO_THREADS > trainer.threads > auto (cdino/threads.py)
        self.governor = ThreadGovernor(tc.threads)  # auto: follows other processes' load while training
        self.device = resolve_device(tc.device)
        self.dist: DistInfo = init_distributed(self.device)
        check_writable(self.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.log = RunLog(self.out_dir, self.dist.is_main, tc.tensorboard)
        # bf16 autocast on CUDA and on CPUs with native bf16 units (AVX512-BF16 / AMX: the
        # demo's DINO step 1.28x faster, BENCHMARKS.md); fp32 elsewhere, and always with precision fp32.
        # fbank, augmentation, the DINO prototypes and the losses stay fp32 under autocast.
        bf16_here = self.device.type == "cuda" or fast_bf16(self.device)
        if tc.precision == "bf16" and not bf16_here:
            self.log("bf16 requested on a CPU without native bf16 units: running fp32")
        self.amp = tc.precision != "fp32" and bf16_here
        # fp32 on CUDA: TF32 tensor cores unless trainer.tf32 is off (set for fit() only).
        self.tf32 = tc.tf32 if self.device.type == "cuda" and not self.amp else None
        fp32 = "fp32" + {True: " (TF32 matmuls and convolutions)", False: " (IEEE)", None: ""}[self.tf32]
        self.num_workers = loader_workers(cfg.data.num_workers, self.device)
        self.log(f"precision {'bf16 autocast' if self.amp else fp32} (trainer.precision {tc.precision}), "
                 f"{self.threads} CPU threads, {self.num_workers} data workers")
        world = self.dist.world_size
        micro = tc.micro_batch or tc.global_batch // world
        if tc.global_batch % (world * micro):
            raise ConfigError(f"trainer.global_batch {tc.global_batch} is not a multiple of "
                              f"{world} ranks x trainer.micro_batch {micro}")
        self.accum = tc.global_batch // (world * micro)
        torch.manual_seed(tc.seed)
        np.random.seed(tc.seed % (2**32))
        banks = build_banks(cfg.noise).to(self.device)
        self.frontend = FeatureFrontend(cfg.fbank, cfg.augment, banks).to(self.device)
        self.store = store if store is not None else open_store(data, cfg.data, progress=self.dist.is_main and progress_enabled(tc.progress))
        skipped = getattr(self.store, "skipped", None)
        if skipped is not None and skipped.count and self.dist.is_main:
            skipped.write(self.out_dir / "skipped.tsv")
            self.log(f"training data: {skipped.summary()} (list in skipped.tsv)")
            if progress_enabled(tc.progress):
                print(f"warning: {skipped.summary()}; see {self.out_dir / 'skipped.tsv'}")
        ctx = MethodContext(cfg=cfg, device=self.device, rank=self.dist.rank,
                            world_size=world, store=self.store, data=data,
                            out_dir=self.out_dir, frontend=self.frontend, log=self.log)
        method.setup(ctx)
        self.student = method.student.to(self.device)
        if world > 1 and self.device.type == "cuda":
            # Batch statistics over the global micro-batch, for the student and (DINO) the
            # teacher alike. gloo has no SyncBatchNorm: on CPUs each rank normalises its own
            # micro-batch (fix trainer.micro_batch for the same batches on any number of
            # ranks) and the running statistics are combined after each step (running_stats).
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            method.student = self.student
            if getattr(method, "teacher", None) is not None:
                method.teacher = nn.SyncBatchNorm.convert_sync_batchnorm(method.teacher)
        self.ddp = None
        self.stats_sync = None
        if world > 1:
            # Without SyncBatchNorm (CPUs) every rank keeps its own BatchNorm statistics, and
            # they are combined after each step as one process would have them (running_stats).
            sync_bn = self.device.type == "cuda"
            self.ddp = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[self.device.index] if sync_bn else None, **_buffer_sync(sync_bn))
            if not sync_bn:
                self.stats_sync = RunningStatsSync(self.student, getattr(method, "teacher", None))
        self.forward_module = self.ddp if self.ddp is not None else self.student
        if tc.compile:
            self.forward_module = torch.compile(self.forward_module)
        self.dataset = method.dataset()
        n = len(self.dataset)
        self.steps_per_epoch = method.steps_per_epoch() or tc.steps_per_epoch or n // tc.global_batch
        if self.steps_per_epoch <= 0:
            raise ConfigError(f"trainer.global_batch {tc.global_batch} exceeds the {n} training utterances")
        self.total_steps = self.steps_per_epoch * tc.epochs
        method.steps_per_epoch_value = self.steps_per_epoch
        oc = cfg.optim
        self.peak_lr = oc.lr * (tc.global_batch / 256.0 if oc.lr_scale_with_batch else 1.0)
        self.warmup_steps = int(round(oc.warmup_epochs * self.steps_per_epoch))
        groups = _param_groups(self.student)
        # foreach: one kernel per operation over all parameters (CUDA's default; on a CPU
        # the same results bit for bit, in fewer small operations: optimiser steps ~1.2x faster).
        if oc.name == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=self.peak_lr, momentum=oc.momentum, foreach=True)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=self.peak_lr, betas=oc.betas, foreach=True)
        self.step = 0
        self.nonfinite_total = 0
        self.history: list[dict] = []
        self.window_log: list[dict] = []  # averaged scalars of each log window (this process's run)
        if self.dist.is_main:
            save_config(cfg, self.out_dir / "config.yaml")

    # ----------------------------------------------------------------- schedules
    def lr_at(self, step: int) -> float:
        oc = self.cfg.optim
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.peak_lr, oc.final_lr)

    def wd_at(self, step: int) -> float:
        oc = self.cfg.optim
        if oc.final_weight_decay is None:
            return oc.weight_decay
        return cosine(step, self.total_steps, oc.weight_decay, oc.final_weight_decay)

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "student": self.student.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "nonfinite_total": self.nonfinite_total,
            "history": json.dumps(self.history),
            "config": json.dumps(to_dict(self.cfg)),
        }

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # on every rank: a method may merge its state over ranks
        if not self.dist.is_main:
            return
        ckpt.atomic_torch_save(state, ckpt.checkpoint_path(self.ckpt_dir, self.step))
        ckpt.prune_checkpoints(self.ckpt_dir, max(self.cfg.trainer.keep_checkpoints,
                                                  self.cfg.trainer.average_last))

    def load_latest(self) -> bool:
        found = ckpt.latest_checkpoint(self.ckpt_dir)
        if found is None:
            return False
        path, state = found
        self.student.load_state_dict(state["student"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.history = json.loads(state.get("history", "[]"))
        self.log(f"resumed from {path.name} at step {self.step}")
        return True

    # ------------------------------------------------------------------ the loop
    def _generator(self, step: int, micro: int) -> torch.Generator:
        """Augmentation RNG of one micro-batch, keyed by its place in the global batch (so
        the draws do not depend on how many ranks share the batch)."""
        g = torch.Generator(device=self.device)
        part = self.dist.rank * self.accum + micro
        g.manual_seed(int(np.random.default_rng([self.cfg.trainer.seed, step, part]).integers(2**62)))
        return g

    def _set_schedules(self, step: int) -> float:
        lr, wd = self.lr_at(step), self.wd_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
            g["weight_decay"] = wd if g.get("apply_wd", True) else 0.0
        return lr

    def _clip_and_check(self) -> torch.Tensor:
        """Clip gradients; zero them when non-finite. Returns a 0/1 device flag (1 = bad)."""
        params = [p for p in self.student.parameters() if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.device)
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        bad = ~torch.isfinite(norm)
        keep = (~bad).to(params[0].grad.dtype)
        for p in params:
            p.grad.nan_to_num_(0.0, 0.0, 0.0).mul_(keep)
        return bad.float()

    def fit(self) -> list[dict]:
        tc = self.cfg.trainer
        if self.resume:
            self.load_latest()
        elif ckpt.list_checkpoints(self.ckpt_dir):
            raise ConfigError(f"{self.ckpt_dir} already holds checkpoints: pass --resume to continue "
                              "or choose another --out")
        bar = progress_bar(total=self.total_steps, initial=self.step, show=self.dist.is_main and tc.progress,
                           lines=10, desc=self.method.name, unit="step", dynamic_ncols=True)
        self.student.train()
        # One loader from this step to the end of the run (its workers live across epochs);
        # every index carries its epoch, so crops do not depend on when workers started.
        spe = self.steps_per_epoch
        feed = BatchFeed(self.dataset, lambda start: GlobalBatchSampler(
            len(self.dataset), tc.global_batch, self.dist.rank, self.dist.world_size, self.accum,
            tc.seed, start // spe, start_step=start % spe, steps=spe,
            with_segment=self.method.segment_fn(), end_step=self.total_steps),
            self.accum, num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        try:
            with cuda_tf32(self.tf32) if self.tf32 is not None else contextlib.nullcontext():
                self._train(feed, bar)
        finally:  # a run stopped by an error leaves no worker processes behind
            feed.close()
            bar.close()
        self.log.close()
        return self.history

    def _train(self, feed: BatchFeed, bar) -> None:
        """The epochs from ``self.step`` on. Nothing here reads a device value back to the
        host per step (each read waits for the device's queue to drain): the logged scalars
        and the non-finite count add up on the device and are read once per log window."""
        tc = self.cfg.trainer
        sums: dict[str, torch.Tensor] = {}
        window_steps, window_start = 0, time.perf_counter()
        nonfinite = torch.zeros((), device=self.device)
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            self.method.on_epoch_start(epoch)
            if hasattr(self.dataset, "epoch"):
                self.dataset.epoch = epoch
            start_in_epoch = self.step - epoch * self.steps_per_epoch
            feed.seek(self.step)  # a new loader only when the dataset changed (e.g. new clusters)
            for _ in range(start_in_epoch, self.steps_per_epoch):
                step = self.step
                lr = self._set_schedules(step)
                if self.stats_sync is not None:
                    self.stats_sync.begin()
                for micro in range(self.accum):
                    batch = feed.next()
                    batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                    sync_ctx = (self.ddp.no_sync() if self.ddp is not None and micro < self.accum - 1
                                else contextlib.nullcontext())
                    with sync_ctx:
                        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                            loss, stats = self.method.training_step(
                                self.forward_module, batch, step, epoch, self._generator(step, micro))
                        (loss / self.accum).backward()
                    for k, v in stats.items():
                        v = v.detach().float() / self.accum
                        sums[k] = sums[k] + v if k in sums else v
                if self.stats_sync is not None:
                    self.stats_sync.end()
                self.method.before_optimizer_step(step, epoch)
                nonfinite += self._clip_and_check()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.method.after_optimizer_step(step, epoch)
                self.step += 1
                fault_point("step")
                changed = self.governor.poll()
                if changed is not None:
                    self.threads = changed
                    self.log(f"step {self.step}: {changed} CPU thread{'s' if changed > 1 else ''} "
                             "(other processes' load changed)")
                window_steps += 1
                bar.update(1)
                last_of_epoch = self.step % self.steps_per_epoch == 0
                if window_steps >= tc.log_every or last_of_epoch:
                    self._log_window(sums, window_steps, window_start, lr, epoch, nonfinite, bar)
                    sums, window_steps, window_start = {}, 0, time.perf_counter()
                    nonfinite = torch.zeros((), device=self.device)
                if tc.checkpoint_every and self.step % tc.checkpoint_every == 0 and not last_of_epoch:
                    self.save_checkpoint()
            extra = self.method.on_epoch_end(epoch)
            bad = feed.take_bad()  # files that failed in the workers (all ranks), each replaced
            if bad:
                extra = {**(extra or {}), "skipped_files": len(bad),
                         "skipped": [f"{p}: {r}" for p, r in bad[:10]]}
                self._note_skipped(bad)
            if extra:
                self.history.append({"epoch": epoch, **extra})
                self.log(f"epoch {epoch + 1}: " + json.dumps(extra))
            self.save_checkpoint()

    def _note_skipped(self, bad: list[tuple[str, str]]) -> None:
        """Log files that could not be read during training and add them to skipped.tsv."""
        for path, reason in bad:
            self.log(f"training data: {path}: {reason} (replaced by another utterance)")
        skipped = getattr(self.store, "skipped", None)
        if skipped is None:
            return
        known = {p for p, _ in skipped.items}
        for path, reason in bad:
            if path not in known:
                skipped.add(path, reason)
        if self.dist.is_main:
            skipped.write(self.out_dir / "skipped.tsv")

    def _log_window(self, sums, n_steps, t0, lr, epoch, nonfinite, bar) -> None:
        # One host read for the whole window: the scalars (averaged over ranks) and this
        # rank's non-finite count in one tensor.
        keys = list(sums)
        means = [all_reduce_mean(torch.stack([sums[k].reshape(()).to(self.device) for k in keys]))] if keys else []
        *read, bad = torch.cat([*means, nonfinite.reshape(1).float()]).tolist()
        values = {k: v / n_steps for k, v in zip(keys, read)}
        bad = int(bad)
        self.nonfinite_total += bad
        dt = max(time.perf_counter() - t0, 1e-9)
        values["utt_per_s"] = n_steps * self.cfg.trainer.global_batch / dt
        values["lr"] = lr
        if bad:
            values["nonfinite_steps"] = bad
        if bad > self.cfg.trainer.max_nonfinite or (bad and bad >= n_steps and n_steps >= 3):
            raise TrainingError(f"{bad} non-finite losses in the last {n_steps} steps (step {self.step}); "
                                f"stopped, the last good checkpoint in {self.ckpt_dir} is intact")
        self.window_log.append({"step": self.step, **values})
        self.method.check_health(values, self.step, epoch)
        if self.dist.is_main:
            bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v)
                             for k, v in values.items() if k in ("loss", "lr", "utt_per_s")
                             or k.startswith("gate")})
            self.log(f"step {self.step} epoch {epoch + 1} " +
                     " ".join(f"{k}={v:.5g}" for k, v in values.items()))
            self.log.scalars({f"{self.method.name}/{k}": v for k, v in values.items()}, self.step)

    # ------------------------------------------------------------------ export
    def final_encoder(self) -> nn.Module:
        """The method's export encoder, averaged over the last K epoch-end checkpoints."""
        k = self.cfg.trainer.average_last
        encoder = self.method.export_encoder()
        if k <= 1:
            return encoder
        ends = [p for s, p in ckpt.list_checkpoints(self.ckpt_dir) if s % self.steps_per_epoch == 0][-k:]
        if len(ends) <= 1:
            return encoder
        states = []
        for p in ends:
            state = ckpt.load_checkpoint(p)
            self.method.load_state_dict(state["method"])
            self.student.load_state_dict(state["student"])
            states.append({k2: v.detach().clone() for k2, v in self.method.export_encoder().state_dict().items()})
        encoder.load_state_dict(ckpt.average_state_dicts(states))
        return encoder

