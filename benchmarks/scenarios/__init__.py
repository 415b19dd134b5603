"""The scenarios: ``drain``, ``bulk``, ``wakeup``, ``growth`` and ``suite`` (``all``).

Each module has a ``run(context, ...) -> list[Result]`` that measures, verifies and prints its
own table; :mod:`benchmarks.__main__` maps the command line onto them.
"""
