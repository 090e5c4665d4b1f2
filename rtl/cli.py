"""What every command line of the project shares: usage errors on one line, and a quiet exit
when the reader of its output goes away."""

import argparse
import os
import sys

__all__ = ["ArgumentParser", "stdout_closed"]


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors are one line on stderr (exit status 2),
    naming the program and pointing at `--help`, instead of the usage text and the error."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def stdout_closed() -> int:
    """After a BrokenPipeError on stdout (the reader went away, as in ``... | head -1``):
    point stdout at /dev/null so that the flush at exit stays quiet; return exit status 1."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return 1                       # not a file (captured): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return 1
