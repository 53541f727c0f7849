"""Training-throughput benchmark of qat_lab on CPU (`make bench`; entry point: bench.run).

It lives at the repository root, not in the installed package: it is a development tool, run with
the repository root as the working directory (`python -m bench.run --out docs/benchmarks.md`).
"""
