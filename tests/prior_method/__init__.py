"""`prior`: q = p = N(0, I), no fast steps, no options of its own; a test registers it to show what
adding a method takes (tests/test_fifth_method.py). Pyro in pyro.py, NumPyro in numpyro.py."""
