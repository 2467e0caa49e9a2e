"""pseudoserve tests; tests/triton runs in its own pytest process (see Makefile)."""
