"""K configs of one task trained at once as a population, on one device (vmap over stacked weights)."""
