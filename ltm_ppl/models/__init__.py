"""Decoders (torch, jax) and the LTM as probabilistic programs (pyro, numpyro).

Import the submodule you need: the torch and jax halves must never import each other.
"""
