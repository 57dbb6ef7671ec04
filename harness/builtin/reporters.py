"""Table formats: Markdown, LaTeX (display cells), CSV and JSON (tidy numbers)."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kalm_bench import hookimpl
from kalm_bench.api import Reporter, ResultTable

if TYPE_CHECKING:  # pandas is imported by the tables handed in; `kalm-bench --help` does not need it
    import pandas as pd


def _tabulate(table: pd.DataFrame, tablefmt: str, colalign: Sequence[str] | None = None) -> str:
    from tabulate import tabulate

    flat = table.reset_index()
    # disable_numparse: cells are already formatted strings ("50.0 ± 3.1 (3)") and must stay as written.
    return tabulate(flat.values.tolist(), headers=[str(c) for c in flat.columns], tablefmt=tablefmt,
                    disable_numparse=True, colalign=colalign)


class MarkdownReporter(Reporter):
    name = "md"
    version = "1"
    extension = "md"
    description = "GitHub-flavoured Markdown (tabulate), every table with its title, then how to read them"

    def render(self, table: pd.DataFrame, title: str | None = None) -> str:
        return (f"### {title}\n\n" if title else "") + _tabulate(table, "github") + "\n"


class CSVReporter(Reporter):
    name = "csv"
    version = "2"
    extension = "csv"
    single_table = True
    description = "one tidy table: a row per observation, numbers in their own columns (mean, std, n, ci_low, ci_high)"

    def render(self, table: pd.DataFrame, title: str | None = None) -> str:
        buf = io.StringIO()
        table.reset_index().to_csv(buf, index=False)
        return buf.getvalue()

    def render_tables(self, tables: Sequence[ResultTable], footer: str | None = None) -> str:
        buf = io.StringIO()
        for t in tables:
            t.tidy.to_csv(buf, index=False)
        return buf.getvalue()


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return value


class JSONReporter(Reporter):
    name = "json"
    version = "1"
    extension = "json"
    description = "every table's tidy rows as JSON ({tables: [{name, title, rows}], notes}); missing numbers are null"

    def render(self, table: pd.DataFrame, title: str | None = None) -> str:
        return json.dumps({"title": title, "rows": table.reset_index().to_dict(orient="records")}, indent=1) + "\n"

    def render_tables(self, tables: Sequence[ResultTable], footer: str | None = None) -> str:
        out = {"tables": [{"name": t.name, "title": t.title,
                           "rows": [{k: _plain(v) for k, v in row.items()} for row in t.tidy.to_dict(orient="records")]}
                          for t in tables],
               "notes": footer}
        return json.dumps(out, indent=1, allow_nan=False) + "\n"


_LATEX_SPECIALS = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                   "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "−": "$-$", "–": "--", "≥": r"$\geq$", "≤": r"$\leq$"}


def _latex_text(text: str) -> str:
    text = str(text)
    out = []
    for i, ch in enumerate(text):
        if ch == "-" and i + 1 < len(text) and text[i + 1].isdigit():
            out.append("$-$")  # a minus sign, not a hyphen
        else:
            out.append(_LATEX_SPECIALS.get(ch) or _LATEX_SYMBOLS.get(ch) or ch)
    return "".join(out)


def _is_numeric_cell(text: str) -> bool:
    t = str(text).strip()
    return bool(t) and (t[0].isdigit() or t[0] in "+-−–")


class LatexReporter(Reporter):
    name = "latex"
    version = "2"
    extension = "tex"
    description = "plain LaTeX tabular (no packages needed) of the result tables; numbers right-aligned"

    def render(self, table: pd.DataFrame, title: str | None = None) -> str:
        flat = table.reset_index()
        cols = [str(c) for c in flat.columns]
        numeric = [i > 0 and all(_is_numeric_cell(v) for v in flat.iloc[:, i]) for i in range(len(cols))]
        spec = "".join("r" if n else "l" for n in numeric)
        lines = [f"% {_latex_text(title).replace(chr(10), ' ')}" if title else None,
                 f"\\begin{{tabular}}{{{spec}}}", "\\hline",
                 " & ".join(_latex_text(c) for c in cols) + r" \\", "\\hline"]
        for row in flat.itertuples(index=False):
            lines.append(" & ".join(_latex_text(v) for v in row) + r" \\")
        lines += ["\\hline", "\\end{tabular}"]
        return "\n".join(line for line in lines if line is not None) + "\n"

    def render_tables(self, tables: Sequence[ResultTable], footer: str | None = None) -> str:
        return "\n".join(self.render(t.display, title=t.title) for t in tables if t.result)


@hookimpl
def register_reporters(register):
    register(MarkdownReporter)
    register(CSVReporter)
    register(JSONReporter)
    register(LatexReporter)
