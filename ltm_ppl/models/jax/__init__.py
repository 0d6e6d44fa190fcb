"""The LTM in JAX and NumPyro: decoder, encoder, likelihood, generate, program (models/torch is the mirror).

Nothing here imports torch.
"""
