"""Components of kind `sampler`."""
