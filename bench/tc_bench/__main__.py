"""`python3 -m tc_bench` (what `bench/run` execs once the release binaries are built)."""

from .main import main

main()
