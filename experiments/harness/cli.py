"""One command-line convention for train, memory, bench and suite: flags plus key=value overrides.

Every command takes `--flag` or `--flag=value` options of its own, positional names where it
has them (a suite's name), and `key=value` config overrides passed to the runs it starts. Every
command ends with the same exit codes, and bad input is one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from experiments.harness.config import UserError

EXIT_OK = 0
EXIT_FAILED = 1  # a run or section failed; its record or log says why
EXIT_USER_ERROR = 2  # bad input: one line, nothing written
EXIT_CANCELLED = 130  # Ctrl-C (128 + SIGINT), as shells report it


@dataclass
class Args:
    """A command line split by kind: flags, positionals and key=value overrides."""

    flags: dict[str, str | bool] = field(default_factory=dict)
    positionals: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    def flag(self, name: str, default: str | bool | None = None) -> str | bool | None:
        """The value of `--name` (True for a bare flag), else `default`."""
        return self.flags.get(name, default)


def split(argv: list[str], flags: dict[str, bool], max_positionals: int = 0) -> Args:
    """Split argv: `flags` maps each known flag to whether it takes a value (`--only X` or
    `--only=X`); anything with `=` that is not a flag is a key=value override."""
    out = Args()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name not in flags:
                known = ", ".join(f"--{f}" for f in flags) or "none"
                raise UserError(f"unknown option --{name}; options: {known}")
            if flags[name]:
                if not eq:
                    if i + 1 >= len(argv):
                        raise UserError(f"--{name} needs a value")
                    i += 1
                    value = argv[i]
                out.flags[name] = value
            elif eq:
                raise UserError(f"--{name} takes no value")
            else:
                out.flags[name] = True
        elif "=" in arg and not arg.startswith("="):
            out.overrides.append(arg)
        elif len(out.positionals) < max_positionals:
            out.positionals.append(arg)
        else:
            raise UserError(f"argument {arg!r} is not key=value; e.g. lr=1e-4 or lora.rank=16")
        i += 1
    return out


def run_main(body: Callable[[], int]) -> int:
    """Run a command's body: a UserError is one line and exit 2, Ctrl-C exit 130."""
    try:
        return body()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
