"""``optimem lab [calibrate] ...``: the lab run, or the page calibration with ``calibrate`` first.

Each command's module is imported only when it runs, so ``calibrate`` never loads the service.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["calibrate"]:
        from optimem.memory.lab.calibrate import main as calibrate

        return calibrate(argv[1:])
    if "--legible" in argv:
        from optimem.memory.lab.legible import main as legible

        return legible(argv)
    from optimem.memory.lab.run import main as run

    return run(argv)


if __name__ == "__main__":
    main()
