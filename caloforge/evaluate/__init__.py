"""Physics validation of generated showers against a reference sample."""
