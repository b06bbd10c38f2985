"""Item features: text embeddings (cached on disk) and attribute tags.
Imports only `starsrec.data`."""
