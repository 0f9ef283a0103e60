"""``python -m nst_engine`` and the ``nst-engine`` command: signal handling comes first,
then the command line (which imports torch)."""

import sys

from . import stopping


def main() -> int:
    stopping.install()
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
