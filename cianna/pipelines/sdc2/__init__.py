"""SKA SDC2 (3D HI cube) pipeline pieces: the classical smooth-and-clip baseline (:mod:`.baseline`)."""
from cianna.pipelines.sdc2.baseline import BaselineConfig, find_sources

__all__ = ["BaselineConfig", "find_sources"]
