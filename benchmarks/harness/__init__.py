"""What the demo and the benchmark scripts share, and the library does not ship: training runs in
their own processes with their record folders (:mod:`harness.runs`, SpeedKD's in
:mod:`harness.speedkd`), and the tables that compare them over seeds (:mod:`harness.evidence`).

The scripts in ``benchmarks/`` import it as a sibling package (Python puts a script's folder
first on its path); the tests, through pytest's ``pythonpath`` setting.
"""
