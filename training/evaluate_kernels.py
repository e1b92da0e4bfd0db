"""A bundle on one synthetic patient reconstructed with other kernels.

    python training/evaluate_kernels.py [--seeds 900000:900030] [--kernels smooth,sharp]
        [--bundle PATH] [--out training/results/synthetic-kernels]

For each seed, :func:`CoronaryCalciumDINOLib.synth.generate_study` renders the study as the
generator draws it (a body kernel: point spread 0.6-0.9 mm) and again with each of
``--kernels`` (``kernel=...``, :data:`CoronaryCalciumDINOLib.synth.scanner.KERNELS`: the
same patient, plaques and noise stream, another point spread, noise grain and strength, and
a sharp kernel's edge enhancement); :func:`CoronaryCalciumDINOLib.pipeline.run_pipeline`
scores each on the CPU. The reference of each reconstruction is the Agatston score of its
own labels (a sharp kernel's calcium is brighter: its reference is higher). Writes a table
(studies with calcium, reference and model totals, risk categories right, calcium-free
studies scored 0, per reconstruction) as ``OUT.md`` and the rows as ``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))
    try:
        import CoronaryCalciumDINOLib  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "CoronaryCalciumDINO"))

#: The reconstruction as drawn (no ``kernel`` option).
AS_DRAWN = "as drawn (body kernel)"


def summary(rows: list[tuple], recon) -> dict:
    """Figures of one reconstruction from (seed, reconstruction, reference, model) rows
    (``recon``: the reconstruction's name or key, e.g. ``"sharp"``)."""
    from CoronaryCalciumDINOLib.scoring import risk_category

    r = [x for x in rows if x[1] == recon]
    return {
        "studies": len(r),
        "with_calcium": sum(x[2] > 0 for x in r),
        "reference_total": sum(x[2] for x in r),
        "model_total": sum(x[3] for x in r),
        "risk_right": sum(risk_category(x[2]) == risk_category(x[3]) for x in r),
        "calcium_free": sum(x[2] == 0 for x in r),
        "calcium_free_scored_0": sum(x[2] == 0 and x[3] == 0 for x in r),
    }


def parse_seeds(text: str, prog: str) -> range | None:
    """``START:END`` -> range(START, END) with 0 <= START < END; else one error line on
    stderr (``prog: error: ...``) and None."""
    try:
        start, end = (int(v) for v in text.split(":"))
        if not 0 <= start < end:
            raise ValueError
    except ValueError:
        print(f"{prog}: error: --seeds must be START:END with 0 <= START < END, got {text}", file=sys.stderr)
        return None
    return range(start, end)


def held_out_run(argv, prog: str, doc: str, bundle_help: str, load):
    """The command line of a per-study measurement on the cached synthetic held-out studies
    (``--seeds``, ``--cache``: study folders, generated there when missing; ``--bundle``:
    ``bundle_help``; ``--out``: the lines printed, also written to a file; ``doc``: the
    script's docstring, whose first paragraph describes it): (args, seeds,
    ``load(args.bundle)``, study folders), or None after one error line on stderr (a bad
    ``--seeds``, a bundle or studies that cannot be read or made)."""
    from CoronaryCalciumDINOLib.errors import CCDinoError
    from CoronaryCalciumDINOLib.evaluation.pipeline_eval import synthetic_study_dirs

    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    ap.add_argument("--seeds", default="900000:900100", help="synthetic seeds START:END (default 900000:900100)")
    ap.add_argument("--cache", default="runs/eval/heldout", help="study folders (generated there when missing)")
    ap.add_argument("--bundle", default=None, help=bundle_help)
    ap.add_argument("--out", default=None, help="also write the lines printed to this file")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds, prog)
    if seeds is None:
        return None
    try:
        return args, seeds, load(args.bundle), synthetic_study_dirs(seeds, args.cache)
    except CCDinoError as exc:
        print(f"{prog}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return None


def score_reconstructions(seeds: range, reconstructions: dict, bundle) -> list[tuple]:
    """(seed, reconstruction, reference, model) rows: each seed rendered with each
    reconstruction's generator options (``{name: overrides}``), its reference the Agatston
    score of its own labels, the model's of ``run_pipeline`` on the CPU; one line per study
    printed as it is scored."""
    from CoronaryCalciumDINOLib.pipeline import run_pipeline
    from CoronaryCalciumDINOLib.scoring import score
    from CoronaryCalciumDINOLib.synth import generate_study

    rows = []
    for seed in seeds:
        for name, overrides in reconstructions.items():
            st = generate_study(seed, **overrides)
            ref = float(score(st.ct.hu, st.labels, st.ct.spacing).total.agatston)
            ai = float(run_pipeline(st.ct, bundle, device="cpu").score.total.agatston)
            rows.append((seed, name, ref, ai))
            print(f"{st.id}: reference {ref:.1f}, model {ai:.1f}", flush=True)
    return rows


def summary_table(rows, groups, first: str = "reconstruction") -> str:
    """Markdown table of :func:`summary` figures, one line per (key, name) of ``groups``
    (``first``: the header of the name column)."""
    lines = [f"| {first} | studies with calcium | reference total | model total | risk category right | "
             "calcium-free scored 0 |", "|---|---|---|---|---|---|"]
    for key, name in groups:
        s = summary(rows, key)
        lines.append(f"| {name} | {s['with_calcium']} | {s['reference_total']:.0f} | {s['model_total']:.0f} | "
                     f"{s['risk_right']} of {s['studies']} | {s['calcium_free_scored_0']} of {s['calcium_free']} |")
    return "\n".join(lines)


def table(rows) -> str:
    """Markdown table, one line per reconstruction, in the order the rows first name them."""
    return summary_table(rows, ((recon, recon) for recon in dict.fromkeys(x[1] for x in rows)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="900000:900030", metavar="START:END", help="seeds START..END-1")
    ap.add_argument("--kernels", default="smooth,sharp", help="kernels besides the drawn one (comma-separated)")
    ap.add_argument("--bundle", default=None, metavar="PATH", help="model bundle (default: the default bundle)")
    ap.add_argument("--out", default=None, metavar="OUT", help="write OUT.md and OUT.json")
    args = ap.parse_args(argv)
    from CoronaryCalciumDINOLib.synth.scanner import KERNELS

    seeds = parse_seeds(args.seeds, "evaluate_kernels")
    if seeds is None:
        return 2
    start, end = seeds.start, seeds.stop
    kernels = [k for k in args.kernels.split(",") if k]
    bad = [k for k in kernels if k not in KERNELS]
    if bad:
        print(f"evaluate_kernels: error: unknown kernel(s) {', '.join(bad)} (known: {', '.join(KERNELS)})",
              file=sys.stderr)
        return 2

    from CoronaryCalciumDINOLib.pipeline import load_bundle

    bundle = load_bundle(args.bundle)
    t0 = time.perf_counter()
    rows = score_reconstructions(seeds, {AS_DRAWN: {}, **{k: {"kernel": k} for k in kernels}}, bundle)
    text = table(rows)
    head = results_head(bundle, seeds, t0)
    print()
    print(head)
    print(text)
    if args.out:
        write_results(Path(args.out), "Synthetic held-out studies reconstructed with other kernels", "evaluate_kernels.py",
                      argv, [head, f"kernels: {json.dumps({k: KERNELS[k] for k in kernels})}"], text, {
                          "model": bundle.model_info(), "seeds": [start, end],
                          "kernels": {k: KERNELS[k] for k in kernels},
                          "rows": [{"seed": s, "reconstruction": r, "reference": ref, "model": ai}
                                   for s, r, ref, ai in rows],
                          "summary": {r: summary(rows, r) for r in dict.fromkeys(x[1] for x in rows)}})
    return 0


def results_head(bundle, seeds: range, t0: float, what: str = "") -> str:
    """First line of a synthetic evaluation's results: the model, the seeds, ``what`` was
    forced (if anything), the CPU and its threads, and the seconds since ``t0``."""
    import torch

    return (f"model {bundle.name} {bundle.version}, seeds {seeds.start}-{seeds.stop - 1}, "
            + (f"{what}, " if what else "")
            + f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
            f"{time.perf_counter() - t0:.0f} s")


def write_results(out: Path, title: str, script: str, argv, lines: list[str], text: str, doc: dict) -> None:
    """``OUT.md`` (the title, ``lines`` as a list with the command after the first, the table
    ``text``) and ``OUT.json`` (``doc``) of a training script ``script`` run with ``argv``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = f"python training/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    items = [lines[0], f"command: `{cmd.strip()}`", *lines[1:]]
    # OUT + ".md", not OUT.with_suffix: a name such as results-0.5.1 keeps its last part
    if out.suffix in (".md", ".json"):
        out = out.with_suffix("")
    md, js = out.with_name(out.name + ".md"), out.with_name(out.name + ".json")
    md.write_text(f"# {title}\n\n" + "".join(f"- {x}\n" for x in items) + f"\n{text}\n", encoding="utf-8")
    js.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {md} and {js}")


if __name__ == "__main__":
    sys.exit(main())
