"""The Textual Inversion method: a new word whose embedding vectors are all that trains.

``prepare`` adds ``tok``, ``tok_1``, ... to the tokenizer, grows the text
encoder's input embedding table and freezes everything else. The table's
weight is the one trainable tensor, but only the new rows may move: a
gradient hook zeroes the other rows' gradients, and ``after_step`` copies
them back bit-identically from a saved copy (decoupled weight decay moves
rows whatever their gradient). This is how diffusers' ``textual_inversion.py``
example and kohya-ss ``train_textual_inversion.py`` keep the vocabulary intact.

SDXL has two text encoders: the word is added to both tokenizers and both
tables train (kohya's ``sdxl_train_textual_inversion.py``); the file holds
``clip_l`` ``[n, 768]`` and ``clip_g`` ``[n, 1280]`` in one safetensors file,
the layout AUTOMATIC1111, ComfyUI and diffusers (``load_textual_inversion``
once per encoder) read for SDXL, whatever ``output.format`` names.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tsuika.formats.embedding import (
    SDXL_KEYS,
    EmbeddingInfo,
    Vectors,
    check_vectors,
    embedding_format,
)
from tsuika.methods.base import Method
from tsuika.models.base import BaseModel

from . import tokens as tk
from .config import TextualInversionConfig
from .templates import CAPTION_BUILDERS

STATE_KEY = "emb_params"
# model kind -> (file key, text encoder, tokenizer) of each table the word is added to
ENCODERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "sdxl": (
        (SDXL_KEYS[0], "text_encoder", "tokenizer"),
        (SDXL_KEYS[1], "text_encoder_2", "tokenizer_2"),
    ),
}
SD_ENCODERS = ((STATE_KEY, "text_encoder", "tokenizer"),)


@dataclass
class _NewRows:
    """The placeholder's rows in one text encoder's input embedding table."""

    key: str  # the file / adapter-state key of its vectors
    encoder: Any
    ids: list[int]
    original: torch.Tensor  # the table as prepared (all rows)
    trainable: torch.Tensor  # bool [rows]: the new rows
    hook: Any = None

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.encoder.get_input_embeddings().weight

    def mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """Zero the gradient of every row but the new ones."""
        if self.trainable.device != grad.device:
            self.trainable = self.trainable.to(grad.device)
        return grad.masked_fill(~self.trainable.unsqueeze(1), 0)

    @torch.no_grad()
    def restore_frozen(self) -> None:
        weight = self.weight
        if self.original.device != weight.device or self.original.dtype != weight.dtype:
            self.original = self.original.to(weight.device, weight.dtype)
        ids = torch.tensor(self.ids, device=weight.device)
        learned = weight.index_select(0, ids)
        weight.copy_(self.original)
        weight.index_copy_(0, ids, learned)

    def vectors(self) -> torch.Tensor:
        weight = self.weight
        ids = torch.tensor(self.ids, device=weight.device)
        return weight.detach().index_select(0, ids).float().cpu().clone()

    @torch.no_grad()
    def load(self, vectors: torch.Tensor, source: str) -> None:
        weight = self.weight
        vectors = check_vectors(vectors, source)
        expected = (len(self.ids), int(weight.shape[1]))
        if tuple(vectors.shape) != expected:
            raise ValueError(f"{source}: shape {list(vectors.shape)}, expected {list(expected)}")
        ids = torch.tensor(self.ids, device=weight.device)
        weight.index_copy_(0, ids, vectors.to(weight.device, weight.dtype))


class TextualInversionMethod(Method):
    """Textual Inversion (Gal et al. 2022) on the text encoder's (SDXL: both encoders')
    input embeddings."""

    name = "textual_inversion"
    caption_draws = True  # templates are drawn per caption

    def __init__(self, config: TextualInversionConfig) -> None:
        self.config = config
        self.model: BaseModel | None = None
        self.token_ids: list[int] = []
        self.initializer_ids: list[int] = []
        self.steps = 0
        self.rows: list[_NewRows] = []  # one per text encoder

    # --- hooking in -------------------------------------------------------------------------

    def prepare(self, model: BaseModel) -> None:
        """Add the placeholder tokens, initialise their vectors, freeze everything else."""
        if self.model is model:
            return
        cfg = self.config
        encoders = ENCODERS.get(model.kind, SD_ENCODERS)
        tokenizers = [getattr(model, tok) for _, _, tok in encoders]
        inits = [tk.initializer_ids(t, cfg.initializer_token) for t in tokenizers]
        for tokenizer in tokenizers:  # every check before any tokenizer changes
            tk.check_new_tokens(tokenizer, cfg.placeholder_token, cfg.tokens)
        for part in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
            if part is not None:
                part.requires_grad_(False)
        self.rows = []
        for (key, attr, _), tokenizer, init_ids in zip(encoders, tokenizers, inits, strict=True):
            ids = tk.add_placeholder_tokens(tokenizer, cfg.placeholder_token, cfg.tokens)
            encoder = getattr(model, attr)
            weight = tk.grow_embedding(encoder, ids, init_ids).weight
            weight.requires_grad_(True)
            trainable = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
            trainable[ids] = True
            rows = _NewRows(key, encoder, ids, weight.detach().clone(), trainable)
            rows.hook = weight.register_hook(rows.mask_gradient)
            self.rows.append(rows)
        self.model, self.token_ids, self.initializer_ids = model, self.rows[0].ids, inits[0]

    @property
    def embedding(self) -> torch.nn.Embedding:
        """The (first) text encoder's input embedding table."""
        self._require_prepared()
        return self.model.text_encoder.get_input_embeddings()  # type: ignore[union-attr]

    def param_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        lr = self.config.embedding_lr if self.config.embedding_lr is not None else learning_rate
        return [{"params": [r.weight for r in self.rows], "lr": lr, "name": "embedding"}]

    # --- per-step hooks ---------------------------------------------------------------------

    @torch.no_grad()
    def after_step(self) -> None:
        """Put back every row but the new ones, bit for bit."""
        self.restore_frozen_rows()
        self.steps += 1

    @torch.no_grad()
    def restore_frozen_rows(self) -> None:
        for rows in self.rows:
            rows.restore_frozen()

    def transform_caption(self, caption: str, class_tokens: str, rng: random.Random) -> str:
        """The caption to train on (``config.template``: a template, or the caption with the
        placeholder put in; see templates.py)."""
        cfg = self.config
        build = CAPTION_BUILDERS[cfg.template]
        return build(caption, class_tokens, cfg.placeholder_token, cfg.placeholder_text, rng)

    # --- state ------------------------------------------------------------------------------

    def vectors(self) -> Vectors:
        """The learned vectors ``[num_vectors, dim]`` (a detached float32 CPU copy); for
        SDXL ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``."""
        self._require_prepared()
        if len(self.rows) == 1:
            return self.rows[0].vectors()
        return {rows.key: rows.vectors() for rows in self.rows}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {rows.key: rows.vectors() for rows in self.rows}

    @torch.no_grad()
    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        keys = [rows.key for rows in self.rows]
        if set(state) != set(keys):
            wanted = f"the one key {keys[0]!r}" if len(keys) == 1 else f"the keys {keys}"
            raise ValueError(
                f"adapter state: textual_inversion expects {wanted}, got {sorted(state)}"
            )
        self.load_vectors(state[keys[0]] if len(keys) == 1 else dict(state), source="adapter state")

    @torch.no_grad()
    def load_vectors(self, vectors: Vectors, source: str = "vectors") -> None:
        """Set the new tokens' vectors (``[num_vectors, dim]``; SDXL: ``clip_l`` / ``clip_g``)."""
        self._require_prepared()
        if isinstance(vectors, torch.Tensor):
            if len(self.rows) != 1:
                raise ValueError(
                    f"{source}: one [n, dim] tensor, but this model needs "
                    f"{', '.join(r.key for r in self.rows)}"
                )
            self.rows[0].load(vectors, source)
            return
        keys = {rows.key for rows in self.rows}
        if set(vectors) != keys:
            raise ValueError(f"{source}: keys {sorted(vectors)}, expected {sorted(keys)}")
        for rows in self.rows:
            rows.load(vectors[rows.key], f"{source}: {rows.key}")

    # --- files ------------------------------------------------------------------------------

    def check_format(self, fmt: str) -> None:
        """An embedding format (``embedding_format`` names the allowed ones)."""
        embedding_format(fmt)

    def save(self, out_dir: Path, name: str, fmt: str, metadata: dict[str, str]) -> Path:
        """Write ``{out_dir}/{name}.pt`` (``a1111``) or ``{name}.safetensors`` (``safetensors``:
        ``emb_params``; ``diffusers``: ``{placeholder_token: vectors}``)."""
        # SDXL: clip_l + clip_g, the one layout every tool reads (see the module doc)
        spec = embedding_format("safetensors" if len(self.rows) > 1 else fmt)
        info = EmbeddingInfo(
            token=self.config.placeholder_token,
            name=name,
            step=self._step(metadata),
            sd_checkpoint=metadata.get("sd_checkpoint"),
            sd_checkpoint_name=self._checkpoint_name(metadata),
            metadata=self.metadata(metadata),
        )
        return spec.write(Path(out_dir) / f"{name}{spec.suffix}", self.vectors(), info)

    def metadata(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Header strings for the safetensors forms (the loop's plus the placeholder's)."""
        cfg = self.config
        out = dict(extra or {})
        out.update(
            {
                "ss_training_method": self.name,
                "ti_placeholder_token": cfg.placeholder_token,
                "ti_initializer_token": cfg.initializer_token,
                "ti_num_vectors": str(cfg.num_vectors),
                "ti_steps": str(self._step(out)),
            }
        )
        return out

    def _step(self, metadata: dict[str, str]) -> int:
        """The training step: the loop's ``ss_steps`` (right after a resume too), else
        the steps this method has seen."""
        try:
            return int(metadata.get("ss_steps", self.steps))
        except ValueError:
            return self.steps

    def _checkpoint_name(self, metadata: dict[str, str]) -> str | None:
        """A1111's ``sd_checkpoint_name``: the base model's file name without extension."""
        if metadata.get("sd_checkpoint_name"):
            return metadata["sd_checkpoint_name"]
        source = self.model.source if self.model is not None else None
        if source is not None:
            return Path(source).stem
        model_name = metadata.get("ss_sd_model_name")
        return Path(model_name).stem if model_name else None

    def _require_prepared(self) -> None:
        if self.model is None:
            raise RuntimeError("TextualInversionMethod.prepare(model) has not been called")
