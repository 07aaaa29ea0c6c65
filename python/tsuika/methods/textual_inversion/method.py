"""The Textual Inversion method: a new word whose embedding vectors are all that trains.

``prepare`` adds ``tok``, ``tok_1``, ... to the tokenizer, grows the text
encoder's input embedding table and freezes everything else. The table's
weight is the one trainable tensor, but only the new rows may move: a
gradient hook zeroes the other rows' gradients, and ``after_step`` copies
them back bit-identically from a saved copy (decoupled weight decay moves
rows whatever their gradient). This is how diffusers' ``textual_inversion.py``
example and kohya-ss ``train_textual_inversion.py`` keep the vocabulary intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from tsuika.formats.embedding import EmbeddingInfo, check_vectors, embedding_format
from tsuika.models.base import BaseModel

from . import tokens as tk
from .config import TextualInversionConfig
from .templates import CAPTION_BUILDERS

STATE_KEY = "emb_params"


class TextualInversionMethod:
    """Textual Inversion (Gal et al. 2022) on the text encoder's input embeddings."""

    name = "textual_inversion"

    def __init__(self, config: TextualInversionConfig) -> None:
        self.config = config
        self.model: BaseModel | None = None
        self.token_ids: list[int] = []
        self.initializer_ids: list[int] = []
        self.steps = 0
        self._original: torch.Tensor | None = None  # the table as prepared (all rows)
        self._trainable: torch.Tensor | None = None  # bool [rows]: the new rows
        self._hook: Any = None

    # --- hooking in -------------------------------------------------------------------------

    def prepare(self, model: BaseModel) -> None:
        """Add the placeholder tokens, initialise their vectors, freeze everything else."""
        if self.model is model:
            return
        cfg = self.config
        init_ids = tk.initializer_ids(model.tokenizer, cfg.initializer_token)
        ids = tk.add_placeholder_tokens(model.tokenizer, cfg.placeholder_token, cfg.tokens)
        for part in (model.unet, model.vae, model.text_encoder):
            part.requires_grad_(False)
        table = tk.grow_embedding(model.text_encoder, ids, init_ids)
        weight = table.weight
        weight.requires_grad_(True)
        self.model, self.token_ids, self.initializer_ids = model, ids, init_ids
        self._original = weight.detach().clone()
        self._trainable = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
        self._trainable[ids] = True
        self._hook = weight.register_hook(self._mask_gradient)

    @property
    def embedding(self) -> torch.nn.Embedding:
        self._require_prepared()
        return self.model.text_encoder.get_input_embeddings()  # type: ignore[union-attr]

    def _mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """Zero the gradient of every row but the new ones."""
        if self._trainable.device != grad.device:  # type: ignore[union-attr]
            self._trainable = self._trainable.to(grad.device)  # type: ignore[union-attr]
        return grad.masked_fill(~self._trainable.unsqueeze(1), 0)  # type: ignore[union-attr]

    def param_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        lr = self.config.embedding_lr if self.config.embedding_lr is not None else learning_rate
        return [{"params": [self.embedding.weight], "lr": lr, "name": "embedding"}]

    # --- per-step hooks ---------------------------------------------------------------------

    @torch.no_grad()
    def after_step(self) -> None:
        """Put back every row but the new ones, bit for bit."""
        self.restore_frozen_rows()
        self.steps += 1

    @torch.no_grad()
    def restore_frozen_rows(self) -> None:
        weight = self.embedding.weight
        if self._original.device != weight.device or self._original.dtype != weight.dtype:  # type: ignore[union-attr]
            self._original = self._original.to(weight.device, weight.dtype)  # type: ignore[union-attr]
        ids = torch.tensor(self.token_ids, device=weight.device)
        learned = weight.index_select(0, ids)
        weight.copy_(self._original)
        weight.index_copy_(0, ids, learned)

    def transform_caption(self, caption: str, class_tokens: str, rng: random.Random) -> str:
        """The caption to train on (``config.template``: a template, or the caption with the
        placeholder put in; see templates.py)."""
        cfg = self.config
        build = CAPTION_BUILDERS[cfg.template]
        return build(caption, class_tokens, cfg.placeholder_token, cfg.placeholder_text, rng)

    # --- state ------------------------------------------------------------------------------

    def vectors(self) -> torch.Tensor:
        """The learned vectors ``[num_vectors, dim]`` (a detached float32 CPU copy)."""
        weight = self.embedding.weight
        ids = torch.tensor(self.token_ids, device=weight.device)
        return weight.detach().index_select(0, ids).float().cpu().clone()

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {STATE_KEY: self.vectors()}

    @torch.no_grad()
    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {STATE_KEY}:
            raise ValueError(
                f"adapter state: textual_inversion expects the one key {STATE_KEY!r}, "
                f"got {sorted(state)}"
            )
        self.load_vectors(state[STATE_KEY], source=f"adapter state: {STATE_KEY}")

    @torch.no_grad()
    def load_vectors(self, vectors: torch.Tensor, source: str = "vectors") -> None:
        """Set the new tokens' vectors (``[num_vectors, dim]``)."""
        weight = self.embedding.weight
        vectors = check_vectors(vectors, source)
        expected = (len(self.token_ids), int(weight.shape[1]))
        if tuple(vectors.shape) != expected:
            raise ValueError(f"{source}: shape {list(vectors.shape)}, expected {list(expected)}")
        ids = torch.tensor(self.token_ids, device=weight.device)
        weight.index_copy_(0, ids, vectors.to(weight.device, weight.dtype))

    # --- files ------------------------------------------------------------------------------

    def save(self, out_dir: Path, name: str, fmt: str, metadata: dict[str, str]) -> Path:
        """Write ``{out_dir}/{name}.pt`` (``a1111``) or ``{name}.safetensors`` (``safetensors``:
        ``emb_params``; ``diffusers``: ``{placeholder_token: vectors}``)."""
        spec = embedding_format(fmt)
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
