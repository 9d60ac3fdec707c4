"""SDC1 (SKA Science Data Challenge 1, 2-D continuum) pipeline pieces.

* :mod:`cianna.pipelines.sdc1.baseline` -- the classical peer: PyBDSF -> SDC1 catalogue.
"""
