"""Challenge scoring through the official SKA scorer (``ska-sdc``), with robust wrappers and catalogue I/O."""
from cianna.scoring.sdc1 import Sdc1Score, read_sdc1_catalog, score_sdc1, write_sdc1_catalog
from cianna.scoring.sdc2 import Sdc2Score, read_sdc2_catalog, score_sdc2, write_sdc2_catalog

__all__ = ["score_sdc1", "Sdc1Score", "read_sdc1_catalog", "write_sdc1_catalog", "score_sdc2", "Sdc2Score",
           "read_sdc2_catalog", "write_sdc2_catalog"]
