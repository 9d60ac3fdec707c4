"""File input/output helpers: FITS images (:func:`cianna.io.fits.read_image`, memory-mapped, forgiving about
degenerate axes and beams) and spectral cubes (:func:`cianna.io.cube.open_cube`)."""
