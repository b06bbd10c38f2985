"""The data layer: the data model and its Parquet storage, validation, the user's own files,
the dataset loaders, the toy world, integer-encoded interactions, splits, the calendar and
artifact integrity. Imports nothing else of starsrec."""
