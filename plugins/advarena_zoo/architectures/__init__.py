"""Architecture plugins, one module each."""
ARCHITECTURES: list = []
