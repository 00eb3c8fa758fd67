"""One module per CLI command: a plain typed function and ``register(app)``."""
