"""The one training loop. Every method (``tsuika.methods``) plugs into it.

Per optimizer step: batches (pixels -> VAE, or cached latents) -> noise and
timesteps from a generator seeded by (seed, step) -> UNet(+adapter) ->
loss (+min-SNR weights, +L1) -> backward on the method's parameters only ->
gradient clipping -> optimizer and LR-schedule step -> ``method.after_step()``;
then logging, validation (``validation.py``: the held-out loss, early
stopping, ``{name}-best``), checkpoints and sample pictures at their
intervals, and at the end the method's file, ``summary.json`` and the loss
plot ``loss.png`` (``plot.py``), with a warning when the curves show
overfitting (``early_stop.py``).

Devices, mixed precision and several GPUs come from ``accelerate``. One GPU
or the CPU: ``tsuika train CONFIG``. Several GPUs::

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

from tsuika.config import RunConfig, uncacheable_augmentations
from tsuika.methods.registry import build_method, default_format
from tsuika.models.tokenizer import prompt_ids
from tsuika.training import checkpoint as ckpt
from tsuika.training.cache import TextCache, module_digest
from tsuika.training.data import TrainData
from tsuika.training.early_stop import overfit_warning
from tsuika.training.losses import per_sample_mse, prior_preservation_loss
from tsuika.training.noise import (
    add_noise,
    compute_snr,
    min_snr_weights,
    sample_noise,
    sample_timesteps,
    step_generator,
    step_seed,
    training_target,
)
from tsuika.training.optim import build_optimizer, build_scheduler, optimizer_class
from tsuika.training.report import Scalars, peak_memory, write_json_atomic
from tsuika.training.validation import DataSplit, ValidationRun, make_split

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _accelerator(cfg: RunConfig) -> Any:
    from accelerate import Accelerator

    precision = cfg.training.mixed_precision
    if precision != "no" and not torch.cuda.is_available():
        precision = "no"  # fp32 on the CPU
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=1)


def _seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one 63-bit seed."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _set_max_norm(method: Any, max_norm: float) -> None:
    """Hand ``training.max_norm`` to a method that applies it in ``after_step``."""
    if max_norm <= 0:
        return
    if not hasattr(method, "max_norm"):
        raise ValueError(
            f"training.max_norm is not supported by method {method.name!r}; set it to 0"
        )
    method.max_norm = max_norm


class Trainer:
    """A run in progress: model + method + optimizer + data, and the loop over them."""

    def __init__(self, cfg: RunConfig, split: DataSplit | None = None) -> None:
        """``split``: the training and validation images (default: from ``[validation]``)."""
        from tsuika.models import load_base_model

        t = cfg.training
        self.cfg = cfg
        self.fmt = cfg.output.format or default_format(cfg.method.name)
        if self.fmt is None:
            raise ValueError(f"output.format is required for method {cfg.method.name!r}")
        optimizer_class(t.optimizer)  # a missing optional package fails before the model loads
        self.accelerator = _accelerator(cfg)
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.weight_dtype = WEIGHT_DTYPES[self.accelerator.mixed_precision]
        if cfg.model.path is None:
            raise ValueError(
                "model.path is required: a single .safetensors file or a diffusers folder"
            )
        self.warnings: list[str] = []
        self.use_cache = self._latent_cache_allowed()
        split = split if split is not None else make_split(cfg)
        self.data = TrainData(
            cfg,
            index=split.train,
            use_cache=self.use_cache,
            rank=self.rank,
            world=self.accelerator.num_processes,
        )
        self.model = load_base_model(
            cfg.model.path,
            vae=cfg.model.vae,
            kind=cfg.model.kind,
            prediction_type=cfg.model.prediction_type,
        )
        self.method = build_method(cfg.method.name, cfg.method.options)
        _set_max_norm(self.method, t.max_norm)
        if hasattr(self.method, "seed"):
            self.method.seed = t.seed  # e.g. DreamBooth's draw of class pictures
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
        self.alphas_cumprod = self.model.scheduler.alphas_cumprod.float().cpu()
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

    def _place_model(self) -> None:
        """Frozen weights in the weight dtype on the device; trainable ones stay float32."""
        m = self.model
        self.trains_text = any(p.requires_grad for p in m.text_encoder.parameters())
        for module in (m.unet, m.text_encoder, m.vae):
            for p in module.parameters():
                if not p.requires_grad and p.is_floating_point():
                    p.data = p.data.to(self.weight_dtype)
            module.to(self.device)
        m.vae.eval()
        m.unet.train(any(p.requires_grad for p in m.unet.parameters()))
        m.text_encoder.train(self.trains_text)
        if self.cfg.training.gradient_checkpointing:
            m.unet.enable_gradient_checkpointing()
            if self.trains_text:
                m.text_encoder.gradient_checkpointing_enable()
        self.text_cache = None if self.trains_text else TextCache()

    def _prepare_for_accelerate(self) -> None:
        m, acc = self.model, self.accelerator
        self.unet = (
            acc.prepare(m.unet) if any(p.requires_grad for p in m.unet.parameters()) else m.unet
        )
        self.text_encoder = acc.prepare(m.text_encoder) if self.trains_text else m.text_encoder
        self.optimizer = acc.prepare(self.optimizer)
        self.wrapped = [
            w for w, r in ((self.unet, m.unet), (self.text_encoder, m.text_encoder)) if w is not r
        ]

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        with torch.no_grad():
            dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
            return dist.mode().float() * self.model.scaling_factor

    def _encode_text(self, captions: list[str]) -> torch.Tensor:
        ids = prompt_ids(self.model.tokenizer, captions).to(self.device)
        return self.text_encoder(ids)[0]

    def _text_states(self, captions: list[str]) -> torch.Tensor:
        if self.text_cache is None:
            return self._encode_text(captions)
        with torch.no_grad():
            return self.text_cache.get(captions, self._encode_text)

    def enable_latent_cache(self) -> None:
        if not self.use_cache:
            return
        digest = module_digest(self.model.vae)
        self.data.enable_cache(
            self.cache_dir, digest, self._encode_pixels, self.cfg.training.batch_size
        )

    # ------------------------------------------------------------------ resume

    def resume(self, target: str | Path | bool) -> None:
        """Restore a checkpoint (``True`` or ``""``: the newest under ``output.dir``)."""
        path = (
            ckpt.latest_checkpoint(self.out_dir) if target in (True, "", "latest") else Path(target)
        )
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
        """One caption through the method's caption hook (unchanged without one)."""
        hook = getattr(self.method, "transform_caption", None)
        return caption if hook is None else hook(caption, class_tokens, rng)

    def _with_prior(
        self, batch: dict[str, Any], latents: torch.Tensor, captions: list[str]
    ) -> tuple[torch.Tensor, list[str], float]:
        """Append the method's paired class pictures (prior preservation), if any."""
        weight = float(getattr(self.method, "prior_loss_weight", 0.0))
        paired_batch = getattr(self.method, "paired_batch", None)
        if paired_batch is None or weight <= 0:
            return latents, captions, 0.0
        paired = paired_batch(batch, self.step)
        if paired is None:
            return latents, captions, 0.0
        class_latents = self._encode_pixels(paired["pixels"])
        return torch.cat([latents, class_latents]), captions + list(paired["captions"]), weight

    def _loss(self, batch: dict[str, Any], micro: int) -> torch.Tensor:
        t, m = self.cfg.training, self.model
        torch.manual_seed(step_seed(t.seed, self.step, micro, self.rank, "dropout"))
        g = step_generator(t.seed, self.step, micro, self.rank)
        if "latents" in batch:
            latents = batch["latents"].to(self.device)
        else:
            latents = self._encode_pixels(batch["pixels"])
        n_instance = latents.shape[0]
        captions = self.train_captions(
            batch, random.Random(step_seed(t.seed, self.step, micro, self.rank, "caption"))
        )
        latents, captions, prior_weight = self._with_prior(batch, latents, captions)
        noise = sample_noise(latents, g, t.noise_offset)
        steps = sample_timesteps(latents.shape[0], len(self.alphas_cumprod), g)
        noisy = add_noise(latents, noise, steps, self.alphas_cumprod)
        hidden = self._text_states(captions)
        timesteps = steps.to(self.device)
        with self.accelerator.autocast():
            pred = self.unet(
                noisy.to(self.weight_dtype),
                timesteps,
                encoder_hidden_states=hidden.to(self.weight_dtype),
            ).sample
        target = training_target(m.prediction_type, latents, noise, steps, self.alphas_cumprod)
        weights = None
        if t.min_snr_gamma > 0:
            snr = compute_snr(steps, self.alphas_cumprod)
            weights = min_snr_weights(snr, t.min_snr_gamma, m.prediction_type)
        per_sample = per_sample_mse(pred, target)
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
        if not self.accelerator.is_main_process:
            return stop
        best = v.early.best_step
        bar.write(f"step {self.step}: validation loss {loss:.5f} (best: step {best})", sys.stderr)
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
            "ss_base_model_version": self.model.kind,
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
    trainer = Trainer(cfg)
    try:
        if resume not in (None, False):
            trainer.resume(resume)
        return trainer.run()
    finally:
        trainer.close()
