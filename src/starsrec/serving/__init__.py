"""The two stages of serving: the offline stage (`starsrec index`, whole or in shards) and the
online service (catalogue, filters, product log, event stores)."""
