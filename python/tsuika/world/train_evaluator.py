"""Train the evaluator shipped in ``tsuika/world/assets`` (CPU, a few minutes):

python -m tsuika.world.train_evaluator [--out PATH] [--n-train N] [--steps N] [--seed S]
"""

from __future__ import annotations

import argparse

import torch

from .evaluator import DEFAULT_PATH
from .fit import train_evaluator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_PATH), help="weights path (.safetensors)")
    parser.add_argument("--n-train", type=int, default=6_000, help="rendered training scenes")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps (batch 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    train_evaluator(args.out, n_train=args.n_train, steps=args.steps, seed=args.seed)


if __name__ == "__main__":
    main()
