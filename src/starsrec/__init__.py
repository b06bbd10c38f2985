"""starsrec: STARS sequential recommendation for e-commerce (arXiv 2512.10149)."""

__version__ = "0.1.0"
