"""SKA SDC2 catalogue I/O and a wrapper around the official scorer (``ska-sdc`` 2.0.0, ``Sdc2Scorer``).

The SDC2 catalogue format is whitespace separated text with one header row and exactly the columns
``id ra dec hi_size line_flux_integral central_freq pa i w20`` (deg, deg, arcsec, Jy Hz, Hz, deg, deg, km/s),
numeric only, no NaN.

:func:`score_sdc2` runs the official scorer (imported lazily; its ``pkg_resources``/pandas deprecation warnings
and its root-logger configuration are kept local) and returns a :class:`Sdc2Score` dataclass. The scorer needs
the optional dependencies ``ska-sdc==2.0.0``, ``pandas<3`` and ``setuptools<81`` (extra ``sdc``).
"""
from __future__ import annotations

import gc
import logging
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from astropy import units as u
from astropy.table import Table

__all__ = ["SDC2_COLUMNS", "SDC2_UNITS", "Sdc2Score", "read_sdc2_catalog", "write_sdc2_catalog", "score_sdc2",
           "as_sdc2_table"]

log = logging.getLogger(__name__)

#: column order of SDC2 truth and submission catalogues
SDC2_COLUMNS = ("id", "ra", "dec", "hi_size", "line_flux_integral", "central_freq", "pa", "i", "w20")
#: units of the SDC2 columns
SDC2_UNITS = {"id": None, "ra": u.deg, "dec": u.deg, "hi_size": u.arcsec, "line_flux_integral": u.Jy * u.Hz,
              "central_freq": u.Hz, "pa": u.deg, "i": u.deg, "w20": u.km / u.s}
#: names of the seven per-property accuracies, in the scorer's order
PROPERTIES = ("position", "central_freq", "line_flux_integral", "hi_size", "pa", "w20", "i")


@dataclass
class Sdc2Score:
    """Result of :func:`score_sdc2`.

    Attributes
    ----------
    value : float
        Final SDC2 score, ``sum(per-match score / n_dup) - n_false``.
    n_det, n_match, n_false, n_bad : int
        Submitted rows, accepted matches, ``n_det - n_match``, candidate matches rejected (multi_d_err >= 5).
    n_true : int
        Rows of the truth catalogue.
    purity : float
        ``n_match / n_det`` (0 when nothing was submitted).
    completeness : float
        ``n_match / n_true`` (0 for an empty truth). Several rows matching one truth source all count.
    acc_pc : float
        Mean per-match score in percent.
    position, central_freq, line_flux_integral, hi_size, pa, w20, i : float
        Per-property accuracy of the matches in percent (mean of ``min(1, thr/err)``); NaN without matches.
    """

    value: float = 0.0
    n_det: int = 0
    n_match: int = 0
    n_false: int = 0
    n_bad: int = 0
    n_true: int = 0
    purity: float = 0.0
    completeness: float = 0.0
    acc_pc: float = 0.0
    position: float = math.nan
    central_freq: float = math.nan
    line_flux_integral: float = math.nan
    hi_size: float = math.nan
    pa: float = math.nan
    w20: float = math.nan
    i: float = math.nan
    match_df: object = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        """Return the numeric fields as a plain dict (no match table)."""
        out = asdict(self)
        out.pop("match_df", None)
        return out

    def summary(self) -> str:
        """Return a small human-readable table of the score and the per-property accuracies."""
        lines = [f"score        {self.value:12.3f}",
                 f"n_det        {self.n_det:12d}", f"n_match      {self.n_match:12d}",
                 f"n_false      {self.n_false:12d}", f"n_bad        {self.n_bad:12d}",
                 f"purity       {self.purity:12.4f}", f"completeness {self.completeness:12.4f}",
                 f"acc_pc       {self.acc_pc:12.2f}"]
        for name in PROPERTIES:
            lines.append(f"acc {name:<19s}{getattr(self, name):8.2f} %")
        return "\n".join(lines)


def as_sdc2_table(catalog) -> Table:
    """Convert a catalogue (path, astropy Table/QTable, pandas DataFrame, dict of columns) to an SDC2 Table.

    Parameters
    ----------
    catalog : str, os.PathLike, astropy.table.Table, pandas.DataFrame or Mapping
        Must provide the nine SDC2 columns (extra columns are dropped). Quantities are converted to the SDC2
        units.

    Returns
    -------
    astropy.table.Table
        Nine float64 columns (``id`` int64) with units, in SDC2 order.

    Raises
    ------
    ValueError
        A column is missing or holds NaN/inf.
    """
    if isinstance(catalog, (str, os.PathLike)):
        return read_sdc2_catalog(catalog)
    if hasattr(catalog, "to_dict") and hasattr(catalog, "columns") and not isinstance(catalog, Table):
        cols = {c: np.asarray(catalog[c]) for c in catalog.columns}  # pandas DataFrame
    elif isinstance(catalog, Table):
        cols = {c: catalog[c] for c in catalog.colnames}
    else:
        cols = dict(catalog)
    missing = [c for c in SDC2_COLUMNS if c not in cols]
    if missing:
        raise ValueError(f"SDC2 catalogue lacks column(s) {missing}; expected {' '.join(SDC2_COLUMNS)}")
    out = Table()
    for name in SDC2_COLUMNS:
        col = cols[name]
        unit = SDC2_UNITS[name]
        if hasattr(col, "unit") and col.unit is not None and unit is not None:
            values = u.Quantity(col).to_value(unit, equivalencies=u.spectral())
        else:
            values = np.asarray(col)
        if name == "id":
            out[name] = np.asarray(values).astype(np.int64)
        else:
            values = np.asarray(values, dtype=np.float64)
            if values.size and not np.all(np.isfinite(values)):
                raise ValueError(f"SDC2 catalogue column {name!r} holds NaN or inf values")
            out[name] = values
            out[name].unit = unit
    return out


def read_sdc2_catalog(path: str | os.PathLike) -> Table:
    """Read an SDC2 text catalogue (one header row, whitespace separated).

    Parameters
    ----------
    path : str or os.PathLike
        Text file with the header ``id ra dec hi_size line_flux_integral central_freq pa i w20``.

    Returns
    -------
    astropy.table.Table
        Nine columns with units (deg, deg, arcsec, Jy Hz, Hz, deg, deg, km/s); zero rows for a header-only file.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Wrong header, wrong number of fields or non-numeric values (the message names the file).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such SDC2 catalogue")
    with open(path) as fh:
        lines = [ln for ln in fh.read().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{path}: empty file, expected an SDC2 header row")
    header = lines[0].split()
    if tuple(header) != SDC2_COLUMNS:
        raise ValueError(f"{path}: header {' '.join(header)!r} is not the SDC2 header {' '.join(SDC2_COLUMNS)!r}")
    rows = []
    for k, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) != len(SDC2_COLUMNS):
            raise ValueError(f"{path}: line {k} has {len(fields)} fields, expected {len(SDC2_COLUMNS)}")
        try:
            rows.append([float(f) for f in fields])
        except ValueError as exc:
            raise ValueError(f"{path}: line {k} is not numeric ({exc})") from exc
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, len(SDC2_COLUMNS))
    return as_sdc2_table({name: arr[:, k] for k, name in enumerate(SDC2_COLUMNS)})


def write_sdc2_catalog(catalog, path: str | os.PathLike) -> str:
    """Write a catalogue in the SDC2 text format, atomically (temporary file + ``os.replace``).

    Parameters
    ----------
    catalog : astropy.table.Table, pandas.DataFrame or Mapping
        With the nine SDC2 columns (quantities are converted to SDC2 units). NaN/inf values are refused.
    path : str or os.PathLike
        Output text file; written with one header row.

    Returns
    -------
    str
        The path written.
    """
    table = as_sdc2_table(catalog)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sdc2_", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(" ".join(SDC2_COLUMNS) + "\n")
            for row in table:
                fh.write(f"{int(row['id'])} " + " ".join(repr(float(row[c])) for c in SDC2_COLUMNS[1:]) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    log.debug("wrote %d SDC2 rows to %s", len(table), path)
    return path


def _to_dataframe(table: Table):
    import pandas as pd

    return pd.DataFrame({c: np.asarray(table[c], dtype=np.int64 if c == "id" else np.float64)
                         for c in SDC2_COLUMNS})


def _run_official(sub: Table, truth: Table, detail: bool):
    """Run ska_sdc's Sdc2Scorer with its warnings and root-logger side effects kept local."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    added = not root.handlers  # ska_sdc calls logging.basicConfig(); a handler makes that a no-op
    if added:
        root.addHandler(guard)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            try:
                from ska_sdc import Sdc2Scorer
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ImportError("score_sdc2 needs the official scorer: pip install 'ska-sdc==2.0.0' "
                                  "'pandas<3' 'setuptools<81' (cianna extra 'sdc')") from exc
            gc.collect()  # ska_sdc leaves a data file open at import: release it while warnings are muted
            level = root.level
            root.setLevel(max(level, logging.WARNING))  # the scorer logs INFO through the root logger
            try:
                scorer = Sdc2Scorer(_to_dataframe(sub), _to_dataframe(truth))
                return scorer.run(train=False, detail=detail)
            finally:
                root.setLevel(level)
    finally:
        if added:
            root.removeHandler(guard)


def score_sdc2(submission, truth, detail: bool = False) -> Sdc2Score:
    """Score an SDC2 submission against a truth catalogue with the official ``ska_sdc.Sdc2Scorer``.

    Parameters
    ----------
    submission, truth : str, os.PathLike, astropy.table.Table, pandas.DataFrame or Mapping
        SDC2 catalogues (paths to SDC2 text files or tables with the nine SDC2 columns). Either may be empty.
    detail : bool, optional
        Keep the scorer's per-match table in ``Sdc2Score.match_df`` (pandas DataFrame).

    Returns
    -------
    Sdc2Score
        ``value`` and counts as computed by ``ska-sdc`` 2.0.0, plus purity, completeness and the seven
        per-property accuracies (percent). An empty submission scores 0; an empty truth scores ``-n_det``.
    """
    sub = as_sdc2_table(submission)
    tru = as_sdc2_table(truth)
    n_det, n_true = len(sub), len(tru)
    if n_det == 0 or n_true == 0:
        log.info("SDC2 score on an empty catalogue (n_det=%d, n_true=%d)", n_det, n_true)
        return Sdc2Score(value=float(-n_det), n_det=n_det, n_false=n_det, n_true=n_true)
    res = _run_official(sub, tru, detail=True)
    score = Sdc2Score(value=float(res.value), n_det=int(res.n_det), n_match=int(res.n_match),
                      n_false=int(res.n_false), n_bad=int(res.n_bad), n_true=n_true,
                      purity=float(res.n_match) / n_det, completeness=float(res.n_match) / n_true,
                      acc_pc=float(res.acc_pc))
    acc = getattr(res, "column_acc_pc", None)
    if acc is not None and res.n_match > 0:
        mapping = {"position": "position", "central_freq": "central_freq", "line_flux_integral": "flux",
                   "hi_size": "hi_size", "pa": "pa", "w20": "w20", "i": "i"}
        for ours, theirs in mapping.items():
            setattr(score, ours, float(acc[theirs]))
    if detail:
        score.match_df = res.match_df
    log.info("SDC2 score %.3f (n_det %d, n_match %d, n_false %d)", score.value, score.n_det, score.n_match,
             score.n_false)
    return score
