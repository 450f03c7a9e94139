"""token-console's benchmarks, side by side in one run (see README "Performance"); `bench/run` is
the one command, `main.py` the order of the sections, one module per job."""
