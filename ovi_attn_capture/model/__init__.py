"""The fusion transformer (two Wan2.2 towers) and its attention kernels."""
