"""Ray Data stages over Arrow batches (each also callable without Ray)."""
