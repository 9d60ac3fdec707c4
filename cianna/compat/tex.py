"""LaTeX table of a network architecture (CIANNA ``print_arch_tex``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings

__all__ = ["arch_tex_table", "write_arch_tex"]

_COLUMNS = ("size", "in_size", "f_size", "out_size", "stride", "padding", "in_padding", "activation", "bias",
            "dropout", "param_count")
_HEADERS = {"size": "Size", "in_size": "Input", "f_size": "Filter", "out_size": "Output", "stride": "Stride",
            "padding": "Pad.", "in_padding": "Int. pad.", "activation": "Activation", "bias": "Bias",
            "dropout": "Dropout", "param_count": "Param."}


def _dims(shape) -> str:
    """CIANNA order ``WxHxDxC`` of a torch ``(C, *spatial)`` shape, or ``N`` for a dense output."""
    shape = tuple(shape)
    if len(shape) == 1:
        return str(shape[0])
    c, *sp = shape
    return "$\\times$".join(str(v) for v in [*sp[::-1], c])


def _xyz(t) -> str:
    return "$\\times$".join(str(v) for v in tuple(t)[::-1])


def _tex(text: str) -> str:
    return str(text).replace("_", "\\_").replace("%", "\\%")


def _cell(net, i, layer, column) -> str:
    kind = layer.kind
    if column == "size":
        return {"conv": lambda: str(layer.out_channels), "dense": lambda: str(layer.out_features),
                "pool": lambda: _xyz(layer.kernel_size), "norm": lambda: f"G{layer.group_size}",
                "lrn": lambda: f"R{layer.range}"}.get(kind, lambda: "-")()
    if column == "in_size":
        return _dims(layer.in_shape)
    if column == "f_size":
        return _xyz(layer.kernel_size) if kind in ("conv", "pool") else "-"
    if column == "out_size":
        return _dims(layer.out_shape)
    if column == "stride":
        return _xyz(layer.stride) if kind in ("conv", "pool") else "-"
    if column == "padding":
        return _xyz(layer.padding) if kind in ("conv", "pool") else "-"
    if column == "in_padding":
        return _xyz(layer.int_padding) if kind == "conv" else "-"
    if column == "activation":
        return _tex(layer.activation.to_string())
    if column == "bias":
        if kind not in ("conv", "dense"):
            return "-"
        return f"{net.input_bias if i == 0 else layer.bias_value:g}"
    if column == "dropout":
        return f"{layer.drop_rate:g}" if layer.has_dropout else "-"
    if column == "param_count":
        return str(sum(p.numel() for p in layer.parameters()))
    raise KeyError(column)


def arch_tex_table(net, columns) -> str:
    """Standalone LaTeX document with one table row per layer.

    Parameters
    ----------
    net : cianna.nn.Network
    columns : sequence of str
        Columns among ``size, in_size, f_size, out_size, stride, padding, in_padding, activation, bias,
        dropout, param_count`` (in that order whatever the order given).

    Returns
    -------
    str
    """
    cols = [c for c in _COLUMNS if c in set(columns)]
    head = ["\\#", "Type"] + [_HEADERS[c] for c in cols]
    lines = ["\\documentclass[border=4pt]{standalone}", "\\begin{document}",
             "\\begin{tabular}{" + "|".join(["c"] * len(head)) + "}", "\\hline",
             " & ".join(head) + " \\\\", "\\hline"]
    names = {"conv": "Conv", "pool": "Pool", "dense": "Dense", "norm": "Norm", "lrn": "LRN"}
    lines.append(" & ".join(["0", "Input", *[_dims(net.input_shape) if c == "out_size" else "-"
                                             for c in cols]]) + " \\\\")
    for i, layer in enumerate(net.layers):
        row = [str(i + 1), names.get(layer.kind, layer.kind)] + [_cell(net, i, layer, c) for c in cols]
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\hline", "\\end{tabular}", "\\end{document}", ""]
    return "\n".join(lines)


def write_arch_tex(net, path: str, file_name: str, columns, *, compile_pdf: bool = True) -> str:
    """Write ``path + file_name + ".tex"`` (verbatim concatenation) and compile it when ``pdflatex`` exists.

    Returns
    -------
    str
        The ``.tex`` path.
    """
    tex_path = f"{path}{file_name}.tex"
    folder = os.path.dirname(tex_path) or "."
    os.makedirs(folder, exist_ok=True)
    with open(tex_path, "w", encoding="utf-8") as fh:
        fh.write(arch_tex_table(net, columns))
    exe = shutil.which("pdflatex") if compile_pdf else None
    if exe is not None:
        try:
            subprocess.run([exe, "-interaction=nonstopmode", os.path.basename(tex_path)], cwd=folder,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=True)
        except (subprocess.SubprocessError, OSError) as exc:
            warnings.warn(f"pdflatex failed on {tex_path}: {exc}", stacklevel=3)
    return tex_path
