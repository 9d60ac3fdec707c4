"""Seeded sky simulators writing real FITS files: SDC1-like continuum fields and SDC2-like HI cubes."""
from cianna.sim.continuum import (ContinuumField, calibrate_population, default_population, sample_population,
                                  simulate_continuum_field)
from cianna.sim.hi_cube import HiCubeResult, sample_hi_sources, simulate_hi_cube

__all__ = ["simulate_continuum_field", "ContinuumField", "sample_population", "calibrate_population",
           "default_population", "simulate_hi_cube", "HiCubeResult", "sample_hi_sources"]
