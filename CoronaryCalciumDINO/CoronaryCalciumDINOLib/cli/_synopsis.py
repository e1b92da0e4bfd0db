"""The command-line synopsis of the README, generated from the argument parsers.

``python -m CoronaryCalciumDINOLib.cli._synopsis`` prints it; ``--write README.md``
replaces the block between the README's synopsis markers; ``--check README.md`` exits 1
when the README's block differs (the tests check the same). The format is the project's
own (not argparse's usage text), so it does not change between Python versions. Options
hidden from ``--help`` (``help=argparse.SUPPRESS``, e.g. ``score --progress-lines``) are left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BEGIN = "<!-- synopsis: generated from the parser by `python -m CoronaryCalciumDINOLib.cli._synopsis --write README.md` -->"
END = "<!-- end of synopsis -->"
WIDTH = 100


def _metavar(action: argparse.Action) -> str:
    mv = action.metavar if action.metavar is not None else action.dest.upper()
    if isinstance(mv, tuple):
        return " ".join(mv)
    if action.nargs == "+":
        return f"{mv} [{mv} ...]"
    return mv


def _token(action: argparse.Action) -> str:
    if not action.option_strings:
        return _metavar(action)
    opt = max(action.option_strings, key=len)
    text = opt if action.nargs == 0 else f"{opt} {_metavar(action)}"
    return text if action.required else f"[{text}]"


def command_synopsis(name: str, parser: argparse.ArgumentParser, width: int = WIDTH) -> str:
    """``ccdino NAME POSITIONALS [options]``, wrapped at ``width`` with aligned continuations."""
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]
    tokens = [_token(a) for a in actions if not a.option_strings] + [_token(a) for a in actions if a.option_strings]
    head = f"ccdino {name} "
    lines, line = [], head
    for tok in tokens:
        if len(line) + len(tok) > width and line.strip() != head.strip():
            lines.append(line.rstrip())
            line = " " * len(head)
        line += tok + " "
    lines.append(line.rstrip())
    return "\n".join(lines)


def synopsis() -> str:
    from . import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return "\n".join(command_synopsis(name, p) for name, p in sub.choices.items())


def readme_block(text: str) -> str:
    """The README's synopsis (between the markers and the code fence)."""
    if BEGIN not in text or END not in text:
        raise SystemExit("the README has no synopsis markers")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return block.strip().removeprefix("```bash").removesuffix("```").strip()


def write_readme(path: str | Path) -> None:
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    readme_block(text)  # markers present
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    p.write_text(f"{before}{BEGIN}\n```bash\n{synopsis()}\n```\n{END}{after}", encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m CoronaryCalciumDINOLib.cli._synopsis")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="README", help="replace the synopsis block of this file")
    g.add_argument("--check", metavar="README", help="exit 1 if this file's synopsis block is out of date")
    args = ap.parse_args(argv)
    if args.write:
        write_readme(args.write)
    elif args.check:
        if readme_block(Path(args.check).read_text(encoding="utf-8")) != synopsis():
            print(f"{args.check}: the command-line synopsis is out of date; run with --write", file=sys.stderr)
            return 1
    else:
        print(synopsis())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
