"""Reference code that tests and ``benchmarks/`` share: plain oracles the library is checked
against, their inputs, and where the shared COCO128 lives. Not part of the installed package.

Importable as ``tests.reference`` with the checkout on ``sys.path`` (pytest's ``pythonpath = ["."]``;
``tools/bench.py`` inserts the checkout itself).
"""
