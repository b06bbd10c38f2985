"""Filtered maximum-inner-product search: the exact reference path, the faiss index
and its sweep."""
