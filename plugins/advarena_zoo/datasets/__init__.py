"""Dataset plugins, one module each."""
DATASETS: list = []
