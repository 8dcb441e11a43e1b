"""The research harness: speed, memory and scale benchmarks of the framework, run from a checkout
(they are not part of the installed ``detector`` package).

``python tools/bench.py [names] [--quick]`` runs the sub-benchmarks listed in ``benchmarks/cli.py``;
the others have their own command line, run from the checkout's root: ``python -m benchmarks.<name>``.
"""
