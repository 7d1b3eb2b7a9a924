"""hessbatch: adaptive batch size SGD driven by the top Hessian eigenvalue (placeholder)."""
__version__ = "0.1.0"
