"""``python -m nst_engine`` and the ``nst-engine`` command: signals are held back first,
then the command runs. ``connect``, what the plug-in runs, goes straight to the relay:
it must start in milliseconds, without even the command line's imports."""

import sys

from . import stopping


def main() -> int:
    stopping.install()
    if sys.argv[1:2] == ["connect"]:
        from .relay import connect_main

        return connect_main(sys.argv[2:])
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
