"""Analysis of trained SAEs: features, behaviours, circuits, labels, steering (to come)."""
