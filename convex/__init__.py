"""hessbatch.convex: ABS/ABSA for L2-regularised logistic regression in NumPy/Numba."""
