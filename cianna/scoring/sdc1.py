"""SDC1 catalogues and score: a thin, honest wrapper around the official ``ska_sdc.Sdc1Scorer`` (2.0.0).

* :func:`read_sdc1_catalog` / :func:`write_sdc1_catalog` read and write the 12-column SDC1 text format
  (``sdc1.md`` §4; write format string of §3.11). Reading accepts files with or without a header: any leading
  lines that do not parse as numbers are skipped (a ``# id ra_core ...`` comment line, one column-name line, or
  the 18-line SKAO header of the training files), and 15-column training files are cut to 12 columns.
* :func:`score_sdc1` runs the official scorer (imported lazily, its ``pkg_resources`` / pandas warnings
  silenced locally, its ``logging.basicConfig`` call neutralised) and returns an :class:`Sdc1Score`.

Area handling (``area=``):

* ``"test"`` -- official challenge setting (``train=False``): sources whose *core* lies inside the training box
  of the frequency are removed from both catalogues.
* ``"train"`` -- only sources inside the training box (``train=True``).
* ``"all"`` -- no area cut. The official scorer has no such switch, so both catalogues are **rotated in RA** by
  the same angle so that every source lies at 0 < RA < 180 deg, i.e. outside the training box (which lies at
  RA <= 0), and the scorer runs with ``train=False``. This is exact: the scorer's KD-tree works on raw
  (RA, Dec) degrees, which a constant RA shift preserves when no source crosses the RA = +-180 wrap, and the
  separations it scores are rotation-invariant (the only RA-dependent quantity, the scorer's radial PB column,
  is not used in the score). Catalogues spanning more than 170 deg in RA raise ``ValueError``.

Empty catalogues: the official scorer crashes (``ValueError: Expected 2D array``) when either catalogue is
empty after the area cut. Here: empty submission -> every count 0, ``value = 0``; empty truth with ``n_det``
submitted sources -> ``n_false = n_det`` and ``value = -n_det``.

``value`` always follows the published formula ``score_det - n_false``. Deviation from ska-sdc 2.0.0: when a
non-empty submission has *no* match, ska-sdc reports ``value = 0.0`` instead of ``-n_det``; this wrapper reports
``-n_det`` (logged at INFO).
"""
from __future__ import annotations

import contextlib
import gzip
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import Table

__all__ = [
    "CAT_COLUMNS", "SDC1_FORMAT", "TRAIN_BOXES", "Sdc1Score", "score_sdc1", "read_sdc1_catalog",
    "write_sdc1_catalog", "catalog_to_dataframe", "in_train_box",
]

log = logging.getLogger(__name__)

#: column names of the SDC1 submission / truth format (``sdc1.md`` §4)
CAT_COLUMNS = ["id", "ra_core", "dec_core", "ra_cent", "dec_cent", "flux", "core_frac", "b_maj", "b_min",
               "pa", "size", "class"]
#: units of the columns (``None`` = dimensionless code / count)
CAT_UNITS = {"id": None, "ra_core": u.deg, "dec_core": u.deg, "ra_cent": u.deg, "dec_cent": u.deg,
             "flux": u.Jy, "core_frac": u.dimensionless_unscaled, "b_maj": u.arcsec, "b_min": u.arcsec,
             "pa": u.deg, "size": None, "class": None}
_INT_COLUMNS = ("id", "size", "class")
#: line format used by the CIANNA SDC1 pipeline (``sdc1.md`` §3.11)
SDC1_FORMAT = "%d %1.8f %2.8f %1.8f %2.8f %g %0.8f %f %f %f %d %d"
#: scorer training boxes (ra_min, ra_max, dec_min, dec_max) in deg, RA in (-180, 180] (``sdc1.md`` §1.1)
TRAIN_BOXES = {560: (-0.6723, 0.0, -29.9400, -29.4061), 1400: (-0.2688, 0.0, -29.9400, -29.7265),
               9200: (-0.04092, 0.0, -29.9400, -29.9074)}
_TERMS = ("position", "flux", "b_maj", "b_min", "pa", "core_frac", "class")
_AREAS = ("test", "train", "all")


# ----------------------------------------------------------------------------------------------- catalogues
def _is_numeric_line(line: str) -> bool:
    tokens = line.split()
    if len(tokens) < 12:
        return False
    try:
        [float(t) for t in tokens]
    except ValueError:
        return False
    return True


def _count_header_lines(path: str, max_lines: int = 200) -> int:
    n = 0
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if _is_numeric_line(line):
                return n
            if n >= max_lines:
                break
            n += 1
    return n


def read_sdc1_catalog(path: str | os.PathLike) -> Table:
    """Read an SDC1 catalogue text file (12 columns; 15-column training files are cut to 12).

    Parameters
    ----------
    path : str or os.PathLike
        Whitespace-separated text file (``.gz`` compressed accepted). Leading lines that are not 12+ numbers are skipped as header (none,
        one ``#`` / column-name line, or the 18-line SKAO training-set header).

    Returns
    -------
    astropy.table.Table
        Columns :data:`CAT_COLUMNS` (N rows) with units deg / Jy / arcsec / deg; ``id``, ``size`` and ``class``
        as int64. ``meta["n_header_lines"]`` records the number of skipped lines.

    Raises
    ------
    FileNotFoundError
        Missing file.
    ValueError
        Fewer than 12 columns, or non-numeric rows after the header.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such SDC1 catalogue")
    skip = _count_header_lines(path)
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is present with ska-sdc
        pd = None
    try:
        if pd is None:  # pragma: no cover
            arr = np.loadtxt(path, skiprows=skip, ndmin=2)
        else:
            df = pd.read_csv(path, sep=r"\s+", skiprows=skip, header=None, comment="#", engine="c")
            arr = df.to_numpy(dtype=float) if len(df) else np.empty((0, 12))
    except ValueError as exc:
        if pd is not None and isinstance(exc, pd.errors.EmptyDataError):
            arr = np.empty((0, 12))
        else:
            raise ValueError(f"{path}: non-numeric values in the SDC1 catalogue after {skip} header line(s)") \
                from exc
    if arr.ndim != 2 or (arr.size and arr.shape[1] < 12):
        raise ValueError(f"{path}: expected 12 (or 15) columns, found {arr.shape[1] if arr.ndim == 2 else 0}")
    table = _table_from_array(arr[:, :12] if arr.size else np.empty((0, 12)))
    table.meta["n_header_lines"] = skip
    table.meta["source_file"] = path
    return table


def _table_from_array(arr: np.ndarray) -> Table:
    cols = []
    for i, name in enumerate(CAT_COLUMNS):
        values = arr[:, i]
        if name in _INT_COLUMNS:
            values = np.rint(values).astype(np.int64)
        cols.append(values)
    table = Table(cols, names=CAT_COLUMNS)
    for name, unit in CAT_UNITS.items():
        if unit is not None:
            table[name].unit = unit
    return table


def write_sdc1_catalog(table: Any, path: str | os.PathLike, *, header: bool = False,
                       overwrite: bool = True) -> str:
    """Write a catalogue in the SDC1 12-column text format (atomic: temporary file + ``os.replace``).

    Parameters
    ----------
    table : astropy.table.Table, pandas.DataFrame or mapping of arrays
        Must hold the columns :data:`CAT_COLUMNS`; Quantity / unit columns are converted to deg, Jy, arcsec.
    path : str or os.PathLike
        Output file.
    header : bool, optional
        Write one ``# id ra_core ...`` comment line first (default ``False``: the official headerless layout,
        as the truth file ``True_560_v2.txt``). :func:`read_sdc1_catalog` and :func:`score_sdc1` read both.
    overwrite : bool, optional
        Refuse to replace an existing file when ``False``.

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path}: exists (overwrite=False)")
    df = catalog_to_dataframe(table, name="table")
    arr = df.to_numpy(dtype=float)
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: refusing to write NaN/inf values into an SDC1 catalogue")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sdc1_", suffix=".txt.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            if header:
                fh.write("# " + " ".join(CAT_COLUMNS) + "\n")
            if len(arr):
                np.savetxt(fh, arr, fmt=SDC1_FORMAT)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)          # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def catalog_to_dataframe(catalog: Any, *, name: str = "catalogue"):
    """Convert a path, Table, DataFrame or mapping to a pandas DataFrame with exactly :data:`CAT_COLUMNS`.

    Parameters
    ----------
    catalog : str, os.PathLike, astropy.table.Table, pandas.DataFrame or dict
        Catalogue; Quantity columns are converted to deg / Jy / arcsec.
    name : str, optional
        Name used in error messages ("submission", "truth").

    Returns
    -------
    pandas.DataFrame
        N rows, columns :data:`CAT_COLUMNS`, int64 for id/size/class and float64 otherwise.
    """
    import pandas as pd

    if isinstance(catalog, (str, os.PathLike)):
        catalog = read_sdc1_catalog(catalog)
    if isinstance(catalog, pd.DataFrame):
        getter = catalog.__getitem__
        names = list(catalog.columns)
    elif isinstance(catalog, Table):
        getter = catalog.__getitem__
        names = catalog.colnames
    elif isinstance(catalog, dict):
        getter = catalog.__getitem__
        names = list(catalog)
    else:
        raise TypeError(f"{name}: expected a path, astropy Table, pandas DataFrame or dict, got "
                        f"{type(catalog).__name__}")
    missing = [c for c in CAT_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{name}: missing SDC1 column(s) {missing}; expected {CAT_COLUMNS}")
    data = {}
    for col in CAT_COLUMNS:
        values = getter(col)
        unit = CAT_UNITS[col]
        if isinstance(values, u.Quantity):
            values = values.to_value(unit) if unit is not None else values.value
        elif getattr(values, "unit", None) is not None and unit is not None:
            values = (np.asarray(values) * values.unit).to_value(unit)
        values = np.asarray(values)
        if values.dtype.kind not in "biuf":
            raise ValueError(f"{name}: column {col!r} is not numeric (dtype {values.dtype})")
        data[col] = np.rint(values).astype(np.int64) if col in _INT_COLUMNS else values.astype(np.float64)
    return pd.DataFrame(data, columns=CAT_COLUMNS)


def in_train_box(ra: np.ndarray, dec: np.ndarray, freq: int = 560) -> np.ndarray:
    """Boolean mask of positions strictly inside the scorer's training box (RA wrapped to (-180, 180]).

    Parameters
    ----------
    ra, dec : array_like, shape (N,)
        Core positions in deg.
    freq : int
        560, 1400 or 9200 (MHz).
    """
    ra = np.where(np.asarray(ra, float) > 180.0, np.asarray(ra, float) - 360.0, np.asarray(ra, float))
    dec = np.asarray(dec, float)
    ra_min, ra_max, dec_min, dec_max = TRAIN_BOXES[int(freq)]
    return (ra > ra_min) & (ra < ra_max) & (dec > dec_min) & (dec < dec_max)


# -------------------------------------------------------------------------------------------------- scoring
@dataclass
class Sdc1Score:
    """Result of :func:`score_sdc1`.

    Attributes
    ----------
    value : float
        Final score ``score_det - n_false``.
    n_det, n_match, n_bad, n_false : int
        Submitted sources in the area, accepted matches, candidate matches rejected (multi_d_err >= 5),
        ``n_det - n_match``.
    n_truth : int
        Truth sources in the area (after the scorer's cleaning).
    score_det : float
        Sum over matches of the mean of the 7 per-term scores.
    purity, completeness : float
        ``n_match / n_det`` and ``n_match / n_truth`` (0 when the denominator is 0).
    acc_pc : float
        ``100 * score_det / n_match`` (0 without match).
    position, flux, b_maj, b_min, pa, core_frac, class_ : float
        Mean per-term score over the matches (0 without match); ``class_`` is the class term.
    area, freq, mode : str, int, int
        Settings used.
    matches : pandas.DataFrame or None
        Per-match table (scorer ``match_df`` joined with the per-term scores) when ``detail=True``.
    """

    value: float = 0.0
    n_det: int = 0
    n_match: int = 0
    n_bad: int = 0
    n_false: int = 0
    n_truth: int = 0
    score_det: float = 0.0
    purity: float = 0.0
    completeness: float = 0.0
    acc_pc: float = 0.0
    position: float = 0.0
    flux: float = 0.0
    b_maj: float = 0.0
    b_min: float = 0.0
    pa: float = 0.0
    core_frac: float = 0.0
    class_: float = 0.0
    area: str = "test"
    freq: int = 560
    mode: int = 0
    matches: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """All scalar fields as a dict (``matches`` left out)."""
        d = asdict(self)
        d.pop("matches", None)
        return d

    def to_table(self) -> Table:
        """Two-column (``quantity``, ``value``) table of the scalar fields, for printing."""
        d = self.to_dict()
        return Table({"quantity": list(d), "value": [str(v) if isinstance(v, str) else f"{v:.6g}"
                                                     for v in d.values()]})


@contextlib.contextmanager
def _quiet_scorer():
    """Silence ska-sdc's import/run warnings and stop its ``logging.basicConfig`` from touching the root logger."""
    root = logging.getLogger()
    guard = None
    if not root.handlers:
        guard = logging.NullHandler()
        root.addHandler(guard)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*pkg_resources.*")
            warnings.filterwarnings("ignore", category=UserWarning, module="ska_sdc")
            yield
    finally:
        if guard is not None:
            root.removeHandler(guard)


def _import_scorer():
    try:
        with _quiet_scorer():
            from ska_sdc import Sdc1Scorer
            from ska_sdc.sdc1.utils.prep import clean_catalogue, refine_area
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("score_sdc1 needs the official scorer: pip install 'ska-sdc==2.0.0' 'pandas>=2.2,<3' "
                          "'setuptools<81'") from exc
    return Sdc1Scorer, clean_catalogue, refine_area


def _rotate_ra(sub, truth):
    """Shift RA of both DataFrames (copies) so all positions lie in (0, 180) deg; see the module notes."""
    ras = np.concatenate([sub[c].to_numpy() for c in ("ra_core", "ra_cent")]
                         + [truth[c].to_numpy() for c in ("ra_core", "ra_cent")])
    if ras.size == 0:
        return sub, truth
    rad = np.radians(ras)
    centre = np.degrees(np.arctan2(np.sin(rad).mean(), np.cos(rad).mean()))
    offs = (ras - centre + 180.0) % 360.0 - 180.0
    if offs.max() - offs.min() > 170.0:
        raise ValueError("area='all': catalogues span more than 170 deg in RA; score them per area instead")
    shift = 90.0 - centre
    out = []
    for df in (sub, truth):
        df = df.copy()
        for c in ("ra_core", "ra_cent"):
            df[c] = (df[c] + shift + 180.0) % 360.0 - 180.0
        out.append(df)
    return out[0], out[1]


def score_sdc1(submission: Any, truth: Any, *, freq: int = 560, area: str = "test", mode: int = 0,
               detail: bool = False) -> Sdc1Score:
    """Score an SDC1 submission against a truth catalogue with the official ``ska_sdc`` scorer.

    Parameters
    ----------
    submission, truth : str, os.PathLike, astropy.table.Table, pandas.DataFrame or dict
        Catalogues with the :data:`CAT_COLUMNS` (files: 12 or 15 columns, header lines detected).
    freq : int, optional
        560, 1400 or 9200 MHz (sets the beam size and training box).
    area : {"test", "train", "all"}, optional
        Area scored; see the module notes ("test" is the official setting).
    mode : int, optional
        0 = cross-match on core positions, 1 = centroids.
    detail : bool, optional
        Keep the per-match table in :attr:`Sdc1Score.matches`.

    Returns
    -------
    Sdc1Score

    Raises
    ------
    ValueError
        Unknown ``area`` / ``freq``, missing or non-numeric columns.
    """
    if area not in _AREAS:
        raise ValueError(f"area must be one of {_AREAS}, got {area!r}")
    if int(freq) not in TRAIN_BOXES:
        raise ValueError(f"freq must be one of {sorted(TRAIN_BOXES)} (MHz), got {freq!r}")
    freq = int(freq)
    Sdc1Scorer, clean_catalogue, refine_area = _import_scorer()
    sub_df = catalog_to_dataframe(submission, name="submission")
    truth_df = catalog_to_dataframe(truth, name="truth")
    for df, what in ((sub_df, "submission"), (truth_df, "truth")):
        if df.isna().to_numpy().any():
            raise ValueError(f"{what}: catalogue contains NaN values")
    if area == "all":
        sub_df, truth_df = _rotate_ra(sub_df, truth_df)
    train = area == "train"
    result = Sdc1Score(area=area, freq=freq, mode=int(mode))
    with _quiet_scorer():
        n_det = len(refine_area(clean_catalogue(sub_df.copy()), freq, train))
        n_truth = len(refine_area(clean_catalogue(truth_df.copy()), freq, train))
        result.n_det, result.n_truth = n_det, n_truth
        if n_det == 0 or n_truth == 0:
            result.n_false = n_det
            result.value = -float(n_det) if n_det else 0.0
            log.info("SDC1 score: empty %s in area %r; value = %g",
                     "submission" if n_det == 0 else "truth", area, result.value)
            return result
        scorer = Sdc1Scorer(sub_df, truth_df, freq)
        score = scorer.run(mode=int(mode), train=train, detail=True)
    result.n_det, result.n_match, result.n_bad = int(score.n_det), int(score.n_match), int(score.n_bad)
    result.n_false = result.n_det - result.n_match
    result.score_det = float(score.score_det)
    result.value = result.score_det - result.n_false
    if result.n_match == 0 and float(score.value) != result.value:
        log.info("ska-sdc reports value %g without matches; using score_det - n_false = %g",
                 float(score.value), result.value)
    result.purity = result.n_match / result.n_det if result.n_det else 0.0
    result.completeness = result.n_match / n_truth if n_truth else 0.0
    result.acc_pc = 100.0 * result.score_det / result.n_match if result.n_match else 0.0
    scores_df = score.scores_df
    if result.n_match and scores_df is not None:
        for term in _TERMS:
            setattr(result, "class_" if term == "class" else term, float(scores_df[term].mean()))
        if detail:
            matches = score.match_df.reset_index(drop=True).copy()
            for term in _TERMS:
                matches[f"score_{term}"] = scores_df[term].to_numpy()
            result.matches = matches
    return result
