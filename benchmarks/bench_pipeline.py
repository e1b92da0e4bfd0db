"""Speed of the AI pipeline on one 512 x 512 x 64 synthetic study (DICOM decoding excluded).

    python benchmarks/bench_pipeline.py [--bundle DIR] [--device cpu|cuda|all] [--threads N]

Prints seconds per stage (heart field, slice detector, segmenter, scoring, total) for
the detector-gated pipeline and for the segmenter on every slice ("UNET alone"), in the
same process on the same study, and their ratio. Default bundle: the shipped one; without
it, an untrained bundle with the same architecture sizes as the recipe's (speed only).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CoronaryCalciumDINO"))


def _study(shape):
    from CoronaryCalciumDINOLib.synth import generate_study

    t = time.perf_counter()
    nz, ny, nx = shape
    if ny != nx:
        raise SystemExit("the synthetic generator makes square slices: use Y == X")
    st = generate_study(4242, matrix=int(nx), n_slices=int(nz))
    print(f"synthetic study {st.ct.shape} generated in {time.perf_counter() - t:.1f} s "
          f"(spacing {tuple(round(s, 3) for s in st.ct.spacing)} mm)")
    return st


def _bundle(path):
    from CoronaryCalciumDINOLib.models.bundle import DEFAULT_BUNDLE_DIR, MANIFEST, load_bundle, save_random_bundle

    if path:
        return load_bundle(path)
    if (DEFAULT_BUNDLE_DIR / MANIFEST).is_file():
        return load_bundle(None)
    tmp = Path(tempfile.mkdtemp()) / "random"
    print("default bundle not built: using an untrained bundle (timings only)")
    return load_bundle(save_random_bundle(
        tmp, input_size=112, depth=None,
        segmenter={"input_size": 192, "crop_mm": 150.0, "channels": [16, 32, 64, 128], "strides": [2, 2, 2]},
        threshold=0.5,
    ))


def bench(st, bundle, device: str, repeat: int) -> None:
    from CoronaryCalciumDINOLib.pipeline import run_pipeline

    run_pipeline(st.ct, bundle, device=device)  # warm-up (allocations, kernels)
    rows = {}
    for mode, all_slices in (("gated", False), ("all_slices", True)):
        best = None
        for _ in range(repeat):
            res = run_pipeline(st.ct, bundle, device=device, all_slices=all_slices)
            if device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            if best is None or res.timings["total_s"] < best[0]["total_s"]:
                best = (res.timings, int(res.selected.sum()))
        rows[mode] = best
    stages = ("heart_box_s", "detector_s", "segmenter_s", "scoring_s", "total_s")
    print(f"\ndevice {device}: seconds per stage (best of {repeat})")
    print(f"{'mode':<12}{'slices':>7}" + "".join(f"{s[:-2]:>11}" for s in stages))
    for mode, (t, n) in rows.items():
        print(f"{mode:<12}{n:>7}" + "".join(f"{t[s]:>11.3f}" for s in stages))
    g, a = rows["gated"][0], rows["all_slices"][0]
    print(f"UNET on every slice / detector-gated: total {a['total_s'] / g['total_s']:.2f}x, "
          f"segmenter stage {a['segmenter_s'] / max(g['segmenter_s'], 1e-9):.1f}x "
          f"({rows['gated'][1]} of {st.ct.shape[0]} slices selected)")


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=None)
    p.add_argument("--device", default="all", help="cpu, cuda or all (cpu, then cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--shape", type=int, nargs=3, default=(64, 512, 512), metavar=("Z", "Y", "X"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}")
    st = _study(args.shape)
    bundle = _bundle(args.bundle)
    print(f"bundle {bundle.name} {bundle.version} (threshold {bundle.threshold:.4f})")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for dev in devices:
        if dev.startswith("cuda") and not torch.cuda.is_available():
            print("\nCUDA not available: GPU figures skipped")
            continue
        bench(st, bundle, dev, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
