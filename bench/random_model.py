"""Save a random-weight Llama of a real model's shape (``common.RANDOM_CONFIGS``) as a Hugging
Face directory, so that every benchmark of ``bench/gpu.sh`` loads the same one with
``--model DIR`` instead of building its own.

    python bench/random_model.py llama-8b /tmp/llama-8b --device cuda
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_correlate import build_random_model
from common import RANDOM_CONFIGS

from entrainment_cli.engines import models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shape", choices=sorted(RANDOM_CONFIGS))
    p.add_argument("out", type=Path)
    p.add_argument("--device", default="auto", help="where the weights are initialized")
    p.add_argument("--dtype", default="auto", help="auto: bfloat16 on cuda, float32 on cpu")
    args = p.parse_args()
    if (args.out / "config.json").is_file():
        print(f"{args.out}: already built")
        return
    device = models.pick_device(args.device)
    build_random_model(args.shape, args.out, device, models.pick_dtype(args.dtype, device))
    print(f"{args.out}: {args.shape} with random weights")


if __name__ == "__main__":
    main()
