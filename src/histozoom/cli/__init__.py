"""``histozoom`` command line: a thin layer over the Python API.

Each subcommand lives in its own module here, with ``register(subparsers)`` that adds
its parser and sets ``func(args) -> int``. Modules are discovered automatically.

``register`` must stay cheap: building the parser (``histozoom --help``, ``histozoom train
--help``, an argument error) imports no torch, scipy or skimage. Heavy modules are imported
inside the ``run`` functions; choices and help texts that come from them are cheap copies
in :mod:`._static` (checked against their sources by the tests). Numeric options use the
validating ``type=`` functions of :mod:`._common`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from ..errors import ConfigError, InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="histozoom", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        importlib.import_module(f"{__name__}.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (InputError, ConfigError) as e:
        print(f"histozoom {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output went away (`... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if e.filename is None:  # not about a file the user named: a bug, keep the traceback
            raise
        # last resort for a file error that no reader or writer turned into an InputError
        print(f"histozoom {args.command}: error: {e.filename}: {e.strerror or type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
