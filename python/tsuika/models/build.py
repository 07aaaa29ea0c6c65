"""Small builders shared by the model families' loaders (:mod:`loading`, :mod:`sdxl`):
modules on the meta device, strict filling from a state dict, the DDPM training
scheduler, and A1111's sidecar ``.yaml`` prediction-type convention."""

from __future__ import annotations

from pathlib import Path

import torch

from .derive import shipped_config


def empty_module(build):
    """Build a module with parameters on the meta device (no random init cost)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def fill_module(
    module: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype
) -> torch.nn.Module:
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    return module.eval()


def ddpm_scheduler(kind_config: str, prediction_type: str, folder: Path | None = None):
    from diffusers import DDPMScheduler

    if folder is not None:
        config = DDPMScheduler.load_config(
            str(folder), subfolder="scheduler", local_files_only=True
        )
    else:
        config = shipped_config(kind_config, "scheduler")
    return DDPMScheduler.from_config({**config, "prediction_type": prediction_type})


def sidecar_prediction(path: Path) -> str | None:
    for candidate in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if candidate.is_file():
            text = candidate.read_text(errors="replace")
            if "parameterization" in text and ('"v"' in text or "'v'" in text or ": v" in text):
                return "v_prediction"
            return "epsilon"
    return None
