"""simlib's benchmarks: scripts that print tables and write them to benchmarks/RESULTS.md.

`python -m benchmarks` runs them all (`--quick` for a small smoke run); `python -m benchmarks --only ann` runs one.
Every figure is measured in the run that writes it; nothing here is a test.
"""
