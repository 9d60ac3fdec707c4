"""File input/output helpers (FITS images and cubes, catalogues)."""
