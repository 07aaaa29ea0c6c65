"""Caches that spare the frozen encoders: VAE latents on disk, text states in memory.

Latent cache (like kohya-ss/sd-scripts' ``cache_latents_to_disk``, with a
content key instead of a file-name key): each (image, bucket, crop, flip) is
VAE-encoded once into ``{cache_dir}/{key[:2]}/{key}.safetensors``. The key
hashes the image's bytes, the VAE's identity (its weights and config), the
bucket, the crop mode and the flip, so a changed picture, VAE or resolution
is encoded again and nothing stale is ever read. Latents are stored already
multiplied by the VAE scaling factor, in float32, as the distribution's mean
(deterministic; SD's VAE posterior std is tiny), next to ``size_info``: the
picture's original (height, width) and the (top, left) of its bucket crop as
the data engine reported them (``load_batch(with_info=True)``), which SDXL's
``add_time_ids`` need. A file written before ``size_info`` existed is encoded
again (counted in :attr:`LatentCache.rebuilt`, which the run reports).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tsuika.atomic import atomic_write


def file_digest(path: str | os.PathLike[str]) -> str:
    """blake2b of a file's bytes (hex)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """blake2b of a module's config (if any) and every parameter/buffer's bytes (hex)."""
    h = hashlib.blake2b(digest_size=16)
    config = getattr(module, "config", None)
    if config is not None:
        h.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        t = tensor.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def latent_key(
    image_digest: str, vae_digest: str, bucket: Sequence[int], crop: str, flip: bool
) -> str:
    """The cache key of one encoded picture."""
    text = f"{image_digest}:{vae_digest}:{bucket[0]}x{bucket[1]}:{crop}:{int(flip)}"
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


# (pixels [n, 3, H, W], info [n, 4]: original h, w, crop top, left) of one bucket's pictures
LoadPixels = Callable[[list[Path], tuple[int, int], list[bool]], tuple[torch.Tensor, Any]]


class LatentCache:
    """Latents (and each picture's size info) on disk keyed by :func:`latent_key`;
    counts hits, encodes and rebuilt files from before ``size_info``."""

    def __init__(self, folder: Path, vae_digest: str) -> None:
        self.folder = Path(folder)
        self.vae_digest = vae_digest
        self._digests: dict[Path, str] = {}
        self.hits = 0
        self.encoded = 0
        self.rebuilt = 0

    def key(self, path: Path, bucket: Sequence[int], crop: str, flip: bool) -> str:
        if path not in self._digests:
            self._digests[path] = file_digest(path)
        return latent_key(self._digests[path], self.vae_digest, bucket, crop, flip)

    def file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.file(key).is_file()

    def has_size_info(self, key: str) -> bool:
        """Whether the stored file holds ``size_info`` (files from before it do not)."""
        with safe_open(str(self.file(key)), "pt") as f:
            return "size_info" in f.keys()  # noqa: SIM118 (safe_open has no __contains__)

    def load_entry(self, key: str) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """(latents, original (h, w), crop (top, left)) of one cached picture."""
        tensors = load_file(str(self.file(key)))
        h, w, top, left = (int(v) for v in tensors["size_info"].tolist())
        return tensors["latents"], (h, w), (top, left)

    def store(self, key: str, latents: torch.Tensor, size_info: Any) -> None:
        """Write one latent [C, h, w] and its size info (original h, w, crop top, left)
        atomically."""
        target = self.file(key)
        tensors = {
            "latents": latents.detach().float().cpu().contiguous(),
            "size_info": torch.as_tensor(size_info, dtype=torch.int64).reshape(4).contiguous(),
        }
        atomic_write(target, lambda tmp: save_file(tensors, tmp))

    def _missing(
        self, requests: Sequence[tuple[str, Path, tuple[int, int], bool]]
    ) -> dict[tuple[tuple[int, int], bool], list[tuple[str, Path]]]:
        """The requests to encode, grouped by (bucket, flip); counts hits and stale files."""
        missing: dict[tuple[tuple[int, int], bool], list[tuple[str, Path]]] = {}
        seen: set[str] = set()
        for key, path, bucket, flip in requests:
            if key in seen:
                continue
            seen.add(key)
            if self.has(key):
                if self.has_size_info(key):
                    self.hits += 1
                    continue
                self.rebuilt += 1
            missing.setdefault((bucket, flip), []).append((key, path))
        return missing

    def fill(
        self,
        requests: Sequence[tuple[str, Path, tuple[int, int], bool]],
        load_pixels: LoadPixels,
        encode: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int = 1,
    ) -> None:
        """Encode every (key, path, bucket, flip) not on disk yet (or stored without size
        info), in batches of one bucket. ``load_pixels`` gives the pixels and the data
        engine's per-picture info (original h, w, crop top, left)."""
        for (bucket, flip), entries in sorted(self._missing(requests).items()):
            for start in range(0, len(entries), batch_size):
                chunk = entries[start : start + batch_size]
                pixels, info = load_pixels([p for _, p in chunk], bucket, [flip] * len(chunk))
                latents = encode(pixels)
                for (key, _), latent, row in zip(chunk, latents, info, strict=True):
                    self.store(key, latent, row)
                self.encoded += len(chunk)

    def rebuilt_message(self) -> str | None:
        """The warning for files that were encoded again for lack of size info (or None)."""
        if not self.rebuilt:
            return None
        return (
            f"{self.rebuilt} cached latent(s) in {self.folder} were written before the cache "
            "kept each picture's original size and crop (SDXL's size conditioning); "
            "they were encoded again"
        )


class TextCache:
    """Text-encoder outputs per caption, kept in memory (LRU) while the encoders are frozen.

    An entry is whatever ``encode`` returns for one caption: a tensor (SD1/SD2's
    hidden states) or a tuple of tensors (SDXL's concatenated states and pooled
    embedding); :meth:`get` returns the same structure, stacked over captions.

    :meth:`fill` encodes a run's every caption up front and closes the cache:
    entries then live on the CPU (moved to the encoders' device per batch), none
    is evicted, and a caption that was not filled is an error, since the
    encoders may have left the device (``text_encoders.py``).
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._store: OrderedDict[str, Any] = OrderedDict()
        self.closed = False
        self._device: torch.device | None = None

    def __len__(self) -> int:
        return len(self._store)

    def fill(self, captions: Sequence[str], encode: Callable[[list[str]], Any]) -> None:
        """Encode every caption not held yet, one at a time, keep them all on the CPU,
        and close the cache to new captions."""
        for caption in dict.fromkeys(captions):
            if caption not in self._store:
                entry = _first_row(encode([caption]))
                self._device = _device_of(entry)
                self._store[caption] = _moved(entry, torch.device("cpu"))
        self.closed = True

    def get(self, captions: Sequence[str], encode: Callable[[list[str]], Any]) -> Any:
        """Encoder outputs ``[B, ...]`` (or a tuple of them) for ``captions``, encoding
        only the unseen ones.

        Each caption is encoded alone, so its state does not depend on which
        other captions happened to miss with it (a resumed run gets the same).
        """
        for caption in dict.fromkeys(captions):
            if caption not in self._store:
                if self.closed:
                    raise RuntimeError(
                        f"caption {caption!r} is not in the text cache, which was filled with "
                        "every caption of the run before the first step (the text encoders "
                        "may be off the device)"
                    )
                self._store[caption] = _first_row(encode([caption]))
        out = []
        for caption in captions:
            self._store.move_to_end(caption)
            out.append(self._store[caption])
        while not self.closed and len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        if isinstance(out[0], tuple):
            stacked: Any = tuple(torch.stack(parts) for parts in zip(*out, strict=True))
        else:
            stacked = torch.stack(out)
        return _moved(stacked, self._device) if self.closed else stacked


def _device_of(entry: Any) -> torch.device:
    return (entry[0] if isinstance(entry, tuple) else entry).device


def _moved(entry: Any, device: torch.device | None) -> Any:
    """A tensor or tuple of tensors on ``device`` (unchanged for None)."""
    if device is None:
        return entry
    if isinstance(entry, tuple):
        return tuple(t.to(device) for t in entry)
    return entry.to(device)


def _first_row(encoded: Any) -> Any:
    """The one caption's entry of a batch-of-one encoder output, detached."""
    if isinstance(encoded, tuple):
        return tuple(t[0].detach() for t in encoded)
    return encoded[0].detach()
