"""Copy the public non-gated COCA scans into a local, git-ignored development set.

    python scripts/real_dev_set.py SOURCE [--out real-dev/coca-nongated] [--overwrite]

SOURCE is one of

* a checkout of github.com/msingh9/cs230-Coronary-Calcium-Scoring- (a folder holding
  ``mini_dataset/deidentified_nongated/``), or a COCA root holding ``deidentified_nongated/``;
* a bare git directory of that repository: only ``mini_dataset/deidentified_nongated`` is
  taken out of it (``git archive HEAD mini_dataset/deidentified_nongated``, unpacked here
  member by member: nothing else is extracted);
* a ``deidentified_nongated`` folder itself.

It copies the scan folders ``deidentified_nongated/<N>/...`` byte for byte to ``OUT/<N>/``
and writes ``OUT/reference.json``::

    {"source": "COCA deidentified_nongated (research use)",
     "scans": {"1": {"id": "1A", "LM": .., "LAD": .., "LCX": .., "RCA": .., "total": ..}, ...}}

from the scores table (``scores.csv`` / ``scores.xlsx``) read by
:func:`CoronaryCalciumDINOLib.data.coca.read_nongated_scores` (COCA's "LCA" column is the
left main, LM; scan id "1A" names folder "1"). Only scans with a folder *and* a score row are
included.

COCA is research-use data: the output must stay out of git. The default ``OUT`` is under
``real-dev/``, which the repository ignores; an ``OUT`` elsewhere inside the repository is
refused. The gated part of COCA (``Gated_release_final``, or any path part naming "gated"
other than as "nongated", e.g. ``deidentified_nongated``) is never opened, listed or read: such a SOURCE is
refused, and such paths inside the non-gated folder are skipped.

Errors are one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "real-dev" / "coca-nongated"
NONGATED = "deidentified_nongated"
ARCHIVE_PATH = "mini_dataset/deidentified_nongated"
SOURCE_NOTE = "COCA deidentified_nongated (research use)"
ARTERY_KEYS = ("LM", "LAD", "LCX", "RCA", "total")


class Refused(Exception):
    """A one-line reason to stop (exit status 2)."""


def gated_part(parts) -> str | None:
    """The first path part that names the gated COCA release, or None: a part with "gated"
    in it once every "nongated" / "non-gated" / "non_gated" is taken out (so
    ``deidentified_nongated`` and ``coca-nongated`` pass, ``Gated_release_final`` does not)."""
    for part in parts:
        low = re.sub(r"non[\s_\-]?gated", "", str(part).lower())
        if "gated" in low:
            return str(part)
    return None


def check_not_gated(path: Path, what: str) -> None:
    """Refuse ``path`` (as given and resolved) when a part of it names the gated release."""
    for parts in (Path(path).parts, Path(os.path.abspath(path)).parts, Path(path).resolve().parts):
        bad = gated_part(parts)
        if bad is not None:
            raise Refused(f"{what} {path} is in the gated COCA release ({bad!r}); only {NONGATED} may be used")


def is_bare_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def safe_member_path(name: str) -> PurePosixPath | None:
    """The member's path below ``mini_dataset/deidentified_nongated``, or None when it is
    outside it, absolute, climbs with ``..`` or names the gated release."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        return None
    prefix = PurePosixPath(ARCHIVE_PATH)
    try:
        rel = p.relative_to(prefix)
    except ValueError:
        return None
    if gated_part(rel.parts) is not None:
        return None
    return rel


def extract_from_git(git_dir: Path, dest: Path) -> Path:
    """Unpack ``mini_dataset/deidentified_nongated`` of ``git_dir``'s HEAD into ``dest``
    (regular files and folders only); returns the unpacked ``deidentified_nongated``."""
    if shutil.which("git") is None:
        raise Refused("git is not installed: cannot read the bare repository")
    cmd = ["git", f"--git-dir={git_dir}", "archive", "--format=tar", "HEAD", ARCHIVE_PATH]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    target = dest / NONGATED
    target.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                rel = safe_member_path(member.name)
                if rel is None or not rel.parts:
                    continue
                out = target.joinpath(*rel.parts)
                if member.isdir():
                    out.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    out.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    with open(out, "wb") as fh:
                        shutil.copyfileobj(src, fh)
                # links and special files are not taken
    except tarfile.TarError as exc:
        proc.kill()
        proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        raise Refused(f"git archive of {git_dir} failed: {err[0] if err else exc}") from None
    finally:
        if proc.stdout:
            proc.stdout.close()
    rc = proc.wait()
    if rc != 0:
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        raise Refused(f"git archive of {git_dir} failed: {err[0] if err else f'exit status {rc}'} "
                      f"(is {ARCHIVE_PATH} in its HEAD?)")
    return target


def find_nongated(source: Path, tmp: Path) -> Path:
    """The ``deidentified_nongated`` folder of SOURCE (unpacked into ``tmp`` for a bare git
    directory). Only the named paths are looked at: nothing beside them is listed."""
    check_not_gated(source, "SOURCE")
    if not source.exists():
        raise Refused(f"SOURCE not found: {source}")
    if not source.is_dir():
        raise Refused(f"SOURCE must be a folder (a checkout, a bare git directory or {NONGATED}): {source}")
    if source.resolve().name.lower() == NONGATED:
        return source
    for candidate in (source / "mini_dataset" / NONGATED, source / NONGATED):
        if candidate.is_dir():
            check_not_gated(candidate, "SOURCE")
            return candidate
    if is_bare_git_dir(source):
        return extract_from_git(source, tmp)
    raise Refused(f"{source} holds no mini_dataset/{NONGATED}/ (nor {NONGATED}/) and is not a bare git directory")


def scan_folders(nongated: Path) -> dict[str, Path]:
    """``{N: folder}`` of the numbered scan folders of ``deidentified_nongated``."""
    return {p.name: p for p in nongated.iterdir()
            if p.is_dir() and not p.is_symlink() and re.fullmatch(r"\d+", p.name)}


def read_reference(nongated: Path) -> dict[str, dict]:
    """``{N: {"id", "LM", "LAD", "LCX", "RCA", "total"}}`` from the scores table."""
    from CoronaryCalciumDINOLib.data.coca import read_nongated_scores

    rows = read_nongated_scores(nongated)
    by_folder: dict[str, list[tuple[str, dict]]] = {}
    for sid, entry in rows.items():
        by_folder.setdefault(str(entry.get("patient", sid)), []).append((sid, entry))
    out: dict[str, dict] = {}
    for folder, entries in by_folder.items():
        if len(entries) > 1:  # several rows name one folder: the "<N>A" row, else the first
            entries.sort(key=lambda e: e[0] != f"{folder}A")
            print(f"real_dev_set: warning: scores rows {', '.join(e[0] for e in entries)} all name folder {folder}; "
                  f"using {entries[0][0]}", file=sys.stderr)
        sid, entry = entries[0]
        out[folder] = {"id": sid, **{k: entry.get(k) for k in ARTERY_KEYS}}
    return out


def copy_scan(src: Path, dst: Path) -> int:
    """Copy the regular files below ``src`` to ``dst`` byte for byte; links and gated-named
    paths are skipped. Returns the number of files copied."""
    n = 0
    for root, dirs, files in os.walk(src, followlinks=False):
        rel_root = Path(root).relative_to(src)
        keep = []
        for d in sorted(dirs):
            if (Path(root) / d).is_symlink() or gated_part([d]) is not None:
                print(f"real_dev_set: warning: skipped {rel_root / d} in {src.name}", file=sys.stderr)
                continue
            keep.append(d)
        dirs[:] = keep
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file() or gated_part([name]) is not None or name.startswith("."):
                continue
            out = dst / rel_root / name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
            n += 1
    return n


def check_out_dir(out: Path) -> Path:
    """Refuse an output inside the repository but outside ``real-dev/`` (it would be tracked)."""
    resolved = Path(os.path.abspath(out)).resolve()
    repo = REPO.resolve()
    if resolved == repo or repo in resolved.parents:
        real_dev = repo / "real-dev"
        if not (resolved == real_dev or real_dev in resolved.parents):
            raise Refused(f"--out {out} is inside the repository but not under real-dev/ (which git ignores); "
                          "COCA files must never be tracked")
    check_not_gated(out, "--out")
    return resolved


def build(source: Path, out: Path, overwrite: bool = False) -> dict:
    """Copy the scans and write ``reference.json``; returns the reference dict."""
    check_not_gated(source, "SOURCE")  # first, whatever else is wrong
    out = check_out_dir(out)
    if out.exists() and not out.is_dir():
        raise Refused(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise Refused(f"--out {out} exists and is not empty; give --overwrite to replace it")
        if not (out / "reference.json").is_file():
            raise Refused(f"--out {out} is not empty and holds no reference.json (not made by this script); "
                          "refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".real-dev-src-", dir=out.parent) as tmp_src, \
            tempfile.TemporaryDirectory(prefix=f".{out.name}-new-", dir=out.parent) as tmp_out:
        nongated = find_nongated(source, Path(tmp_src))
        folders = scan_folders(nongated)
        reference = read_reference(nongated)
        both = sorted(set(folders) & set(reference), key=int)
        if not both:
            raise Refused(f"no scan has both a folder and a score row in {nongated} "
                          f"({len(folders)} folders, {len(reference)} score rows)")
        for name in sorted(set(folders) - set(reference), key=int):
            print(f"real_dev_set: warning: folder {name} has no score row; left out", file=sys.stderr)
        new = Path(tmp_out)
        scans = {}
        for name in both:
            n = copy_scan(folders[name], new / name)
            if n == 0:
                print(f"real_dev_set: warning: folder {name} holds no file; left out", file=sys.stderr)
                shutil.rmtree(new / name, ignore_errors=True)
                continue
            scans[name] = reference[name]
            print(f"scan {name} ({reference[name]['id']}): {n} files")
        if not scans:
            raise Refused(f"no scan folder in {nongated} holds a file")
        doc = {"source": SOURCE_NOTE, "scans": scans}
        (new / "reference.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(new, out)  # the emptied temporary name is then gone: its cleanup ignores that
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", metavar="SOURCE",
                    help="checkout (holding mini_dataset/deidentified_nongated), bare git directory, or a "
                         "deidentified_nongated folder")
    ap.add_argument("--out", default=None, metavar="DIR",
                    help="output folder (default: real-dev/coca-nongated of this repository, git-ignored)")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier output of this script")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else DEFAULT_OUT
    try:
        doc = build(Path(args.source), out, overwrite=args.overwrite)
    except Refused as exc:
        print(f"real_dev_set: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line, no traceback (InputError, OSError, ...)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"real_dev_set: error: {reason}", file=sys.stderr)
        return 2
    print(f"wrote {len(doc['scans'])} scans and reference.json to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
