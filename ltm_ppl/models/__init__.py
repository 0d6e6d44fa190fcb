"""The LTM's networks and probabilistic programs, one subpackage per backend: models.torch (the
decoder, encoder, likelihood and generation in PyTorch, and the Pyro program) and models.jax (the
same files and names in JAX, and the NumPyro program).

Import the module you need: the torch and jax halves never import each other.
"""
