"""Components of kind `policy`."""
