"""Components of kind `critic`."""
