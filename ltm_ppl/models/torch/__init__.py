"""The LTM in PyTorch and Pyro: decoder, encoder, likelihood, generate, program (models/jax is the mirror).

Nothing here imports jax.
"""
