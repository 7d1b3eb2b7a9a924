"""hessbatch.deep: ABS/ABSA over PyTorch models."""
