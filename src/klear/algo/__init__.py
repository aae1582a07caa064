"""Pure torch: policy losses, advantages and the one aggregation function."""
