"""Components of kind `backbone`: sequence models over token embeddings."""
