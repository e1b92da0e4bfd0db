"""Pretraining speed on this machine: optimiser steps per second of ``training.pretrain_dino``.

    python benchmarks/bench_ssl_pretrain.py [--studies 2] [--steps 6] [--threads 1] [--full]

Generates synthetic studies (written to a temporary folder), then runs a few steps of plain
DINO, DINO-LG, DINO-LG + multi-view and DINO-LG + location conditioning at a tiny setting
(ViT-Ti/16, 12 blocks, 64-px global and 32-px local crops, 2 + 4 crops, batch 8) and prints
steps/s of each over the second of two epochs (data loading from the in-memory study cache +
forward/backward + EMA; the first epoch reads the studies from disk and warms up) and its
ratio to plain DINO. ``--full`` adds one DINO-default-sized step set
(ViT-S/16, 224 px + 8 x 96 px, batch 4) to show what a CPU costs per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds training/


def write_studies(root: Path, n: int) -> None:
    from CoronaryCalciumDINOLib.data.studies import write_study
    from CoronaryCalciumDINOLib.synth import generate_study

    for i in range(n):
        write_study(generate_study(seed=i), root)


def run(data: Path, out: Path, steps: int, extra: list[str]) -> float:
    from training.pretrain_dino import main

    args = ["--data", str(data), "--output", str(out), "--device", "cpu", "--num-workers", "0",
            "--epochs", "2", "--iters-per-epoch", str(steps), "--warmup-epochs", "0", *extra]
    if main(args) != 0:
        raise SystemExit(f"run failed: {extra}")
    lines = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    epoch = [l for l in lines if "epoch_end" in l][-1]
    return float(epoch["steps_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--full", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tiny = ["--arch", "vit_tiny_patch16_224", "--img-size", "64", "--local-size", "32", "--local-crops", "4",
            "--out-dim", "4096", "--batch-size", "8"]
    settings = {
        "dino": tiny,
        "dino-lg": tiny + ["--label-guided"],
        "dino-lg-multiview": tiny + ["--label-guided", "--multiview", "adjacent"],
        "dino-lg-location": tiny + ["--label-guided", "--location-conditioning", "--neighbor-loss-weight", "0.5"],
    }
    if a.full:
        settings["full-size dino (vit_small, 224+8x96, batch 4)"] = [
            "--arch", "vit_small_patch16_224", "--batch-size", "4", "--out-dim", "65536"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_studies(tmp / "studies", a.studies)
        base = None
        print(f"threads={a.threads} studies={a.studies} steps/run={a.steps}")
        for i, (name, extra) in enumerate(settings.items()):
            sps = run(tmp / "studies", tmp / f"run{i}", a.steps, extra)
            base = base or sps
            print(f"{name:50s} {sps:7.3f} steps/s  {1 / sps:7.2f} s/step  x{sps / base:5.2f} vs dino")


if __name__ == "__main__":
    main()
