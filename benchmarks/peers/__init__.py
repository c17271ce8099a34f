"""Official-style implementations that benchmarks measure nexus_fast against (and tests use as
oracles): written as the official repositories run them, Python loops included."""
