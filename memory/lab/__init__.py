"""The forgetting-curve lab: ``optimem lab`` measures curves on real conversations (``run``),
``optimem lab calibrate`` how densely a page can be typeset and still read back (``calibrate``).

Modules: ``run`` (needles, baselines, the tier frontier), ``calibrate``, ``corpus`` (the real
conversations and the Chinese text), ``plots``, ``common`` (what run and calibrate share) and
``cli`` (the ``optimem lab`` dispatcher). Importing this package loads none of them but ``cli``.
"""
from optimem.memory.lab.cli import main

__all__ = ["main"]
