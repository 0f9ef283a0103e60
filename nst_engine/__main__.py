"""``python -m nst_engine`` and the ``nst-engine`` command: signal handling comes first,
then the command line (which imports torch)."""

import sys

from . import stopping


def main() -> int:
    stopping.install()
    if sys.argv[1:2] == ["connect"]:  # the plug-in's way in: no torch in this process
        from . import service

        idle = service.idle_default()
        if sys.argv[2:3] == ["--idle-timeout"] and len(sys.argv) > 3:
            idle = float(sys.argv[3])
        return service.connect(idle)
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
