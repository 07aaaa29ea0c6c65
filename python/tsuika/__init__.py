"""tsuika: additional training for Stable Diffusion (LoRA, Textual Inversion,
DreamBooth, Hypernetworks) with a Rust data engine."""

__version__ = "0.1.0"
