"""Building blocks that some methods share but the core does not need: mixing, pseudo-label filters, frozen feature
extractors, losses on soft targets."""
