"""Caches that spare the frozen encoders: VAE latents on disk, text states in memory.

Latent cache (like kohya-ss/sd-scripts' ``cache_latents_to_disk``, with a
content key instead of a file-name key): each (image, bucket, crop, flip) is
VAE-encoded once into ``{cache_dir}/{key[:2]}/{key}.safetensors``. The key
hashes the image's bytes, the VAE's identity (its weights and config), the
bucket, the crop mode and the flip, so a changed picture, VAE or resolution
is encoded again and nothing stale is ever read. Latents are stored already
multiplied by the VAE scaling factor, in float32, as the distribution's mean
(deterministic; SD's VAE posterior std is tiny).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
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


class LatentCache:
    """Latents on disk keyed by :func:`latent_key`; counts hits and encodes."""

    def __init__(self, folder: Path, vae_digest: str) -> None:
        self.folder = Path(folder)
        self.vae_digest = vae_digest
        self._digests: dict[Path, str] = {}
        self.hits = 0
        self.encoded = 0

    def key(self, path: Path, bucket: Sequence[int], crop: str, flip: bool) -> str:
        if path not in self._digests:
            self._digests[path] = file_digest(path)
        return latent_key(self._digests[path], self.vae_digest, bucket, crop, flip)

    def file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.file(key).is_file()

    def load(self, key: str) -> torch.Tensor:
        return load_file(str(self.file(key)))["latents"]

    def store(self, key: str, latents: torch.Tensor) -> None:
        """Write one latent [C, h, w] atomically."""
        target = self.file(key)
        tensors = {"latents": latents.detach().float().cpu().contiguous()}
        atomic_write(target, lambda tmp: save_file(tensors, tmp))

    def fill(
        self,
        requests: Sequence[tuple[str, Path, tuple[int, int], bool]],
        load_pixels: Callable[[list[Path], tuple[int, int], list[bool]], torch.Tensor],
        encode: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int = 1,
    ) -> None:
        """Encode every (key, path, bucket, flip) not on disk yet, in batches of one bucket."""
        missing: dict[tuple[tuple[int, int], bool], list[tuple[str, Path]]] = {}
        seen: set[str] = set()
        for key, path, bucket, flip in requests:
            if key in seen:
                continue
            seen.add(key)
            if self.has(key):
                self.hits += 1
            else:
                missing.setdefault((bucket, flip), []).append((key, path))
        for (bucket, flip), entries in sorted(missing.items()):
            for start in range(0, len(entries), batch_size):
                chunk = entries[start : start + batch_size]
                pixels = load_pixels([p for _, p in chunk], bucket, [flip] * len(chunk))
                latents = encode(pixels)
                for (key, _), latent in zip(chunk, latents, strict=True):
                    self.store(key, latent)
                self.encoded += len(chunk)


class TextCache:
    """Encoder hidden states per caption, kept in memory (LRU) while the encoder is frozen."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get(
        self, captions: Sequence[str], encode: Callable[[list[str]], torch.Tensor]
    ) -> torch.Tensor:
        """Hidden states [B, T, D] for ``captions``, encoding only the unseen ones.

        Each caption is encoded alone, so its state does not depend on which
        other captions happened to miss with it (a resumed run gets the same).
        """
        for caption in dict.fromkeys(captions):
            if caption not in self._store:
                self._store[caption] = encode([caption])[0].detach()
        out = []
        for caption in captions:
            self._store.move_to_end(caption)
            out.append(self._store[caption])
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return torch.stack(out)
