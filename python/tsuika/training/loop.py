"""The one training loop. Every method (``tsuika.methods``) plugs into it.

Per optimizer step: batches (pixels -> VAE, or cached latents) -> noise and
timesteps from a generator seeded by (seed, step) -> the training objective
(``objective.py``: condition on the captions, UNet(+adapter), per-sample loss)
-> min-SNR weights, prior preservation, L1 -> backward on the method's
parameters only -> gradient clipping -> optimizer and LR-schedule step ->
``method.after_step()`` (every hook the loop calls is declared on
:class:`tsuika.methods.base.Method`);
then logging, validation (``validation.py``: the held-out loss, early
stopping, ``{name}-best``), checkpoints and sample pictures at their
intervals, and at the end the method's file, ``summary.json`` and the loss
plot ``loss.png`` (``plot.py``), with a warning when the curves show
overfitting (``early_stop.py``).

Devices, mixed precision and several GPUs come from ``accelerate``. One GPU
or the CPU: ``tsuika train CONFIG``. bf16 also runs on the CPU (its autocast);
fp16 needs CUDA and falls back to float32 there, with a warning
(:func:`run_precision`). With no text encoder training, their outputs are
cached and the encoders leave the device once every caption is encoded
(``text_encoders.py``). Several GPUs::

    accelerate launch --num_processes 2 -m tsuika.cli train CONFIG

Each process then trains on every ``num_processes``-th batch of the one
deterministic batch stream (so ``batch_size`` is per process), gradients are
averaged by DDP, and only the main process writes files.

Determinism: noise, timesteps and the global torch seed (adapter dropout)
are derived from (seed, step, micro-batch, process) at every step, and a
checkpoint holds the adapter, optimizer, LR schedule, RNG states and data
position, so on the CPU an interrupted and resumed run ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tsuika.atomic import check_writable, write_json_atomic
from tsuika.config import RunConfig, uncacheable_augmentations
from tsuika.data.split import DataSplit
from tsuika.formats.kohya_lora import BASE_MODEL_VERSIONS
from tsuika.methods.base import hand_class_pictures
from tsuika.methods.registry import build_method, default_format
from tsuika.training import checkpoint as ckpt
from tsuika.training import interrupt
from tsuika.training.cache import TextCache, module_digest
from tsuika.training.data import TrainData, run_split
from tsuika.training.early_stop import overfit_warning
from tsuika.training.losses import prior_preservation_loss
from tsuika.training.noise import sample_noise, sample_timesteps, step_generator, step_seed
from tsuika.training.objective import (
    DiffusionObjective,
    SampleSize,
    batch_sizes,
    build_objective,
    vae_dtype,
)
from tsuika.training.optim import build_optimizer, build_scheduler, optimizer_class
from tsuika.training.report import Scalars, peak_memory
from tsuika.training.text_encoders import KEPT_TRAINS, TextEncoderPlacement, run_captions
from tsuika.training.validation import ValidationRun

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# training.mixed_precision -> what a run without CUDA gets: bf16 runs under the CPU's
# autocast; fp16 autocast needs CUDA, so such a run trains in float32 (with a warning).
CPU_PRECISION = {"no": "no", "bf16": "bf16", "fp16": "no"}


def run_precision(requested: str, cuda: bool) -> tuple[str, str | None]:
    """The mixed precision a run gets, and a warning when it is not the one asked for."""
    got = requested if cuda else CPU_PRECISION[requested]
    if got == requested:
        return got, None
    return got, (
        f"training.mixed_precision = {requested!r} needs a CUDA GPU; this run trains in "
        "float32 on the CPU (bf16 runs under the CPU's autocast)"
    )


def _accelerator(precision: str) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != precision:
        # A second run in one process (tests, cv) with another precision: accelerate
        # keeps one state per process and refuses a change; the device state stays.
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=1)


def _seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one 63-bit seed."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """A run in progress: model + method + optimizer + data, and the loop over them."""

    def __init__(self, cfg: RunConfig, split: DataSplit | None = None) -> None:
        """``split``: the training and validation images (default: from ``[validation]``)."""
        from tsuika.models import FAMILIES, load_base_model

        t = cfg.training
        self.cfg = cfg
        self.fmt = cfg.output.format or default_format(cfg.method.name)
        if self.fmt is None:
            raise ValueError(f"output.format is required for method {cfg.method.name!r}")
        optimizer_class(t.optimizer)  # a missing optional package fails before the model loads
        precision, precision_warning = run_precision(t.mixed_precision, torch.cuda.is_available())
        self.accelerator = _accelerator(precision)
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.weight_dtype = WEIGHT_DTYPES[self.accelerator.mixed_precision]
        if cfg.model.path is None:
            raise ValueError(
                "model.path is required: a single .safetensors file or a diffusers folder"
            )
        self.warnings: list[str] = []
        if precision_warning:
            self.warn(precision_warning)
        self.use_cache = self._latent_cache_allowed()
        split = split if split is not None else run_split(cfg)
        self.data = TrainData(
            cfg,
            index=split.train,
            use_cache=self.use_cache,
            rank=self.rank,
            world=self.accelerator.num_processes,
        )
        self.method = build_method(cfg.method.name, cfg.method.options)
        self.method.configure(seed=t.seed, max_norm=t.max_norm)
        self.method.check_format(self.fmt)  # before the model loads, not after the last step
        self.model = load_base_model(
            cfg.model.path,
            vae=cfg.model.vae,
            kind=cfg.model.kind,
            prediction_type=cfg.model.prediction_type,
            families=FAMILIES,
        )
        hand_class_pictures(self.method, split.class_pictures, cfg.data.path)
        _seed_everything(step_seed(t.seed, 0, purpose="init"))  # the adapter's initial weights
        self.method.prepare(self.model)
        self._place_model()
        groups = self.method.param_groups(t.learning_rate)
        self.params = [p for g in groups for p in g["params"] if p.requires_grad]
        self.optimizer = build_optimizer(t.optimizer, groups, t.learning_rate, t.weight_decay)
        self.lr_schedule = build_scheduler(
            t.lr_scheduler, self.optimizer, t.steps, t.lr_warmup_steps, t.lr_cycles, t.lr_power
        )
        self._prepare_for_accelerate()
        self.objective = self._build_objective()
        self.step = 0
        self.position = (0, 0)
        self.history: list[list[float]] = []
        self.step_seconds: list[float] = []
        self.seconds_before = 0.0
        self.resumed_from: Path | None = None
        self.samples: list[str] = []
        self.checkpoints: list[str] = []
        self.out_dir = Path(cfg.output.dir)
        self.cache_dir = self.out_dir / "cache" / "latents"  # content-keyed, shareable
        self.validation = ValidationRun(self, split.val) if split.val is not None else None

    # ------------------------------------------------------------------ setup

    def warn(self, message: str) -> None:
        """A plain warning: on the console (main process) and in ``summary.json``."""
        self.warnings.append(message)
        if self.accelerator.is_main_process:
            print(f"tsuika: warning: {message}", file=sys.stderr, flush=True)

    def _latent_cache_allowed(self) -> bool:
        d = self.cfg.data
        blocked = uncacheable_augmentations(d)
        if d.cache_latents and blocked:
            self.warn(
                f"data.cache_latents is on, but {', '.join(blocked)} change the picture at "
                "every epoch and cannot be cached: latents are encoded on the fly for this run "
                "(data.flip alone can be cached, as a second latent per image)"
            )
            return False
        return d.cache_latents

    def _text_encoders(self) -> list[Any]:
        """The model's text encoders (two for SDXL)."""
        m = self.model
        return [m.text_encoder] + ([m.text_encoder_2] if m.text_encoder_2 is not None else [])

    def _place_model(self) -> None:
        """Frozen weights in the weight dtype on the device; trainable ones stay float32.

        The VAE runs in float32 where its family overflows in fp16 (SDXL's),
        unless ``model.vae_fp16_safe`` says the user's VAE is safe.
        """
        m = self.model
        encoders = self._text_encoders()
        self.trains_text = any(p.requires_grad for e in encoders for p in e.parameters())
        vae = vae_dtype(m.kind, self.weight_dtype, self.cfg.model.vae_fp16_safe)
        dtypes = [(m.unet, self.weight_dtype), (m.vae, vae)]
        for module, dtype in dtypes + [(e, self.weight_dtype) for e in encoders]:
            for p in module.parameters():
                if not p.requires_grad and p.is_floating_point():
                    p.data = p.data.to(dtype)
            module.to(self.device)
        m.vae.eval()
        m.unet.train(any(p.requires_grad for p in m.unet.parameters()))
        for encoder in encoders:
            trains = any(p.requires_grad for p in encoder.parameters())
            encoder.train(trains)
            if trains and self.cfg.training.gradient_checkpointing:
                encoder.gradient_checkpointing_enable()
        if self.cfg.training.gradient_checkpointing:
            m.unet.enable_gradient_checkpointing()
        self.text_cache = None if self.trains_text else TextCache()
        self.text_placement = TextEncoderPlacement(
            encoders, self.device, reason=KEPT_TRAINS if self.trains_text else ""
        )

    def _prepare_for_accelerate(self) -> None:
        m, acc = self.model, self.accelerator
        self.unet = (
            acc.prepare(m.unet) if any(p.requires_grad for p in m.unet.parameters()) else m.unet
        )
        self.text_encoder, self.text_encoder_2 = (
            acc.prepare(e) if e is not None and any(p.requires_grad for p in e.parameters()) else e
            for e in (m.text_encoder, m.text_encoder_2)
        )
        self.optimizer = acc.prepare(self.optimizer)
        pairs = (
            (self.unet, m.unet),
            (self.text_encoder, m.text_encoder),
            (self.text_encoder_2, m.text_encoder_2),
        )
        self.wrapped = [w for w, r in pairs if w is not r]

    def _build_objective(self) -> DiffusionObjective:
        """The training objective over the modules as placed and wrapped for this run."""
        return build_objective(
            self.model,
            unet=self.unet,
            text_encoder=self.text_encoder,
            device=self.device,
            weight_dtype=self.weight_dtype,
            autocast=self.accelerator.autocast,
            text_cache=self.text_cache,
            text_encoder_2=self.text_encoder_2,
        )

    def enable_latent_cache(self) -> None:
        if not self.use_cache:
            return
        digest = module_digest(self.model.vae)
        self.data.enable_cache(
            self.cache_dir, digest, self.objective.encode, self.cfg.training.batch_size
        )
        message = self.data.cache.rebuilt_message() if self.data.cache else None
        if message:
            self.warn(message)

    def cache_text(self) -> None:
        """With the text cache on and every caption of the run known: encode them all,
        then move the text encoders off the device (``text_encoders.py``)."""
        if self.text_cache is None:
            return
        captions, reason = run_captions(
            self.data.loader.fixed_captions(),
            self.data.index,
            self.method,
            self.caption_for,
            self.validation.validator.captions if self.validation is not None else (),
        )
        self.text_placement.reason = reason
        if captions is not None:
            self.objective.fill_text_cache(captions)
            self.text_placement.cached_captions = len(captions)
            self.text_placement.offload()

    # ------------------------------------------------------------------ resume

    def resume(self, target: str | Path | bool) -> None:
        """Restore a checkpoint (``True`` or ``""``: the newest under ``output.dir``)."""
        path = ckpt.resume_target(self.out_dir, target, self.warn)
        adapter, state = ckpt.load_checkpoint(path)
        stored = ckpt.checkpoint_config(path).get("method", {}).get("name")
        if stored is not None and stored != self.cfg.method.name:
            raise ckpt.CheckpointError(
                f"{path}: checkpoint of method {stored!r}, but the config trains {self.cfg.method.name!r}"
            )
        self.method.load_adapter_state(adapter)
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_schedule.load_state_dict(state.scheduler)
        ckpt.restore_rng(state.rng)
        self.step, self.position = state.step, (state.epoch, state.batch_index)
        self.history = [list(x) for x in state.train_loss]
        if self.validation is not None:
            self.validation.load_state(state.validation)
        self.seconds_before = state.seconds
        self.resumed_from = path

    def save_checkpoint(self) -> None:
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        epoch, batch = self.data.position
        state = ckpt.TrainingState(
            step=self.step,
            epoch=epoch,
            batch_index=batch,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.lr_schedule.state_dict(),
            rng=ckpt.capture_rng(),
            train_loss=self.history,
            seconds=self.seconds_before + sum(self.step_seconds),
            validation=self.validation.state() if self.validation is not None else {},
        )
        path = ckpt.save_checkpoint(
            self.out_dir, self.method.adapter_state(), state, self.cfg.to_dict()
        )
        self.checkpoints.append(str(path))

    # ------------------------------------------------------------------ one step

    def train_captions(self, batch: dict[str, Any], rng: random.Random) -> list[str]:
        """The captions to train on: the method's caption hook (Textual Inversion's
        templates, DreamBooth's instance prompt) applied to the batch's captions."""
        tokens = [self.data.index[i].class_tokens for i in batch["indices"]]
        return [self.caption_for(c, k, rng) for c, k in zip(batch["captions"], tokens, strict=True)]

    def caption_for(self, caption: str, class_tokens: str, rng: random.Random) -> str:
        """One caption through the method's caption hook (unchanged by default)."""
        return self.method.transform_caption(caption, class_tokens, rng)

    def _with_prior(
        self,
        batch: dict[str, Any],
        latents: torch.Tensor,
        captions: list[str],
        sizes: list[SampleSize],
    ) -> tuple[torch.Tensor, list[str], list[SampleSize], float]:
        """Append the method's paired class pictures (prior preservation), if any."""
        weight = float(self.method.prior_loss_weight)
        if weight <= 0:
            return latents, captions, sizes, 0.0
        paired = self.method.paired_batch(batch, self.step)
        if paired is None:
            return latents, captions, sizes, 0.0
        class_latents = self.objective.encode(paired["pixels"])
        return (
            torch.cat([latents, class_latents]),
            captions + list(paired["captions"]),
            sizes + batch_sizes(paired),
            weight,
        )

    def _loss(self, batch: dict[str, Any], micro: int) -> torch.Tensor:
        t, obj = self.cfg.training, self.objective
        torch.manual_seed(step_seed(t.seed, self.step, micro, self.rank, "dropout"))
        g = step_generator(t.seed, self.step, micro, self.rank)
        if "latents" in batch:
            latents = batch["latents"].to(self.device)
        else:
            latents = obj.encode(batch["pixels"])
        n_instance = latents.shape[0]
        captions = self.train_captions(
            batch, random.Random(step_seed(t.seed, self.step, micro, self.rank, "caption"))
        )
        latents, captions, sizes, prior_weight = self._with_prior(
            batch, latents, captions, batch_sizes(batch)
        )
        noise = sample_noise(latents, g, t.noise_offset)
        steps = sample_timesteps(latents.shape[0], obj.num_timesteps, g)
        per_sample = obj.per_sample_loss(latents, noise, steps, obj.condition(captions, sizes))
        weights = obj.min_snr_weights(steps, t.min_snr_gamma) if t.min_snr_gamma > 0 else None
        loss = prior_preservation_loss(per_sample, n_instance, prior_weight, weights)
        if t.l1 > 0:
            loss = loss + t.l1 * sum(p.abs().sum() for p in self.params)
        return loss

    def _no_sync(self, skip: bool) -> contextlib.AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        if skip:
            for module in self.wrapped:
                stack.enter_context(self.accelerator.no_sync(module))
        return stack

    def train_step(self, batches: Iterator[dict[str, Any]]) -> float:
        """One optimizer step over ``gradient_accumulation`` micro-batches; the mean loss."""
        t = self.cfg.training
        total = torch.zeros((), device=self.device)
        for micro in range(t.gradient_accumulation):
            batch = next(batches)
            with self._no_sync(micro < t.gradient_accumulation - 1):
                loss = self._loss(batch, micro)
                self.accelerator.backward(loss / t.gradient_accumulation)
            total += loss.detach().float() / t.gradient_accumulation
        if t.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.params, t.max_grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_step()
        self.step += 1
        return float(self.accelerator.reduce(total, "mean"))

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        """Train from :attr:`step` to ``training.steps``; write the file and summary."""
        from tqdm.auto import tqdm

        cfg, t = self.cfg, self.cfg.training
        main = self.accelerator.is_main_process
        scalars = Scalars(self.out_dir / "logs", enabled=main)
        self.enable_latent_cache()
        self.cache_text()
        batches = self.data.batches(self.position)
        bar = tqdm(total=t.steps, initial=self.step, disable=not main, desc="train", unit="step")
        try:
            while self.step < t.steps:
                start = time.perf_counter()
                loss = self.train_step(batches)
                self.step_seconds.append(time.perf_counter() - start)
                self.history.append([self.step, loss])
                lr = self.lr_schedule.get_last_lr()[0]
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if self.step % t.log_every == 0 or self.step == t.steps:
                    scalars.add({"loss/train": loss, "lr": lr}, self.step)
                stop = self._validate(scalars, bar)
                if t.save_every and self.step % t.save_every == 0:
                    self.save_checkpoint()
                if cfg.sample.every and cfg.sample.prompts and self.step % cfg.sample.every == 0:
                    self.sample()
                interrupt.stop_if_requested(self)  # Ctrl-C: checkpoint, then stop
                if stop:
                    break
        finally:
            bar.close()
            scalars.close()
        return self.finish()

    def _validate(self, scalars: Scalars, bar: Any) -> bool:
        """Evaluate when due; True when early stopping says the run should end."""
        v = self.validation
        if v is None or not v.due(self.step, self.cfg.training.steps):
            return False
        stop = v.evaluate(self.step)
        loss = v.history[-1][1]
        scalars.add({"loss/validation": loss}, self.step)
        if v.scores:
            scalars.add({"loss/validation_caption_gain": v.scores[-1][1]}, self.step)
        if not self.accelerator.is_main_process:
            return stop
        best = v.early.best_step
        gain = f", caption gain {v.scores[-1][1]:.5f}" if v.scores else ""
        bar.write(
            f"step {self.step}: validation loss {loss:.5f}{gain} (best: step {best})", sys.stderr
        )
        if stop:
            bar.write(
                f"early stopping at step {self.step}: no improvement in "
                f"{v.early.bad_evals} evaluations; best step {best}",
                sys.stderr,
            )
        return stop

    def sample(self) -> None:
        from tsuika.training.sampling import sample_pictures, save_sample_grid

        if not self.accelerator.is_main_process:
            return
        s = self.cfg.sample
        bucket = self.cfg.data.resolution
        with self.text_placement.on_device():
            images = sample_pictures(
                self.model,
                list(s.prompts),
                width=s.width or bucket,
                height=s.height or bucket,
                steps=s.steps,
                cfg=s.cfg,
                seed=s.seed,
                negative_prompt=s.negative_prompt,
                device=self.device,
                dtype=self.weight_dtype,
            )
        self.samples.append(str(save_sample_grid(images, self.out_dir / "samples", self.step)))

    def metadata(self) -> dict[str, str]:
        t = self.cfg.training
        return {
            "ss_steps": str(self.step),
            "ss_max_train_steps": str(t.steps),
            "ss_learning_rate": str(t.learning_rate),
            "ss_seed": str(t.seed),
            "ss_base_model_version": BASE_MODEL_VERSIONS.get(self.model.kind, self.model.kind),
            "ss_v2": str(self.model.kind == "sd2"),
            "ss_resolution": str(self.cfg.data.resolution),
            "ss_sd_model_name": Path(str(self.cfg.model.path)).name,
            "ss_training_comment": "tsuika",
        }

    def finish(self) -> dict[str, Any]:
        """Write the method's file and ``summary.json`` (main process); return the summary."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return {}
        final = self.method.save(self.out_dir, self.cfg.output.name, self.fmt, self.metadata())
        run_seconds = sum(self.step_seconds)
        cache = self.data.cache
        summary = {
            "method": self.cfg.method.name,
            "steps_done": self.step,
            "final_file": str(final),
            "train_loss": self.history,
            "seconds_per_step": run_seconds / len(self.step_seconds) if self.step_seconds else None,
            "seconds_total": self.seconds_before + run_seconds,
            "peak_memory": peak_memory(),
            "device": str(self.device),
            "mixed_precision": self.accelerator.mixed_precision,
            "num_processes": self.accelerator.num_processes,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "latent_cache": {"hits": cache.hits, "encoded": cache.encoded} if cache else None,
            "text_encoders": self.text_placement.summary(),
            "checkpoints": self.checkpoints,
            "samples": self.samples,
            "config": self.cfg.to_dict(),
        }
        summary.update(self._curves())
        summary["warnings"] = self.warnings
        write_json_atomic(self.out_dir / "summary.json", summary)
        return summary

    def _curves(self) -> dict[str, Any]:
        """Validation results, the overfitting warning and the loss plot."""
        from tsuika.training.plot import plot_losses

        out: dict[str, Any] = {}
        val: list[list[float]] = []
        if self.validation is not None:
            out.update(self.validation.summary())
            val = self.validation.history
            message = overfit_warning(self.history, val, self.cfg.validation.overfit_window)
            if message:
                self.warn(message)
        out["loss_plot"] = str(plot_losses(self.history, val, self.out_dir / "loss.png"))
        return out

    def close(self) -> None:
        self.data.close()


def train(cfg: RunConfig, resume: str | Path | bool | None = None) -> dict[str, Any]:
    """Run ``cfg`` (resuming from a checkpoint when ``resume`` is given); return the summary."""
    check_writable(cfg.output.dir)  # fail before the model loads, not at the first save
    trainer = Trainer(cfg)
    try:
        if resume not in (None, False):
            trainer.resume(resume)
        with interrupt.on_sigint():
            return trainer.run()
    finally:
        trainer.close()
