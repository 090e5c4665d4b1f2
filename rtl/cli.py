"""What every command line of the project shares: usage errors on one line."""

import argparse
import sys

__all__ = ["ArgumentParser"]


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors are one line on stderr (exit status 2),
    naming the program and pointing at `--help`, instead of the usage text and the error."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)
