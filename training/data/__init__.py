"""Data: sources (competition layout, image folder, CSV, built-in demo), decode cache, split,
batches, and ``prepare`` that puts them together for a run. Importing this package imports none
of them (torch and OpenCV come with the loaders and the decode, not with a source's listing)."""
