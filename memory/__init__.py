"""Sessions, turns, pages, tiers, the forgetting curve, compaction, context, recall, the store and its jobs."""
