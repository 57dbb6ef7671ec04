"""Table formats: Markdown, CSV and LaTeX."""

from __future__ import annotations

import io

import pandas as pd

from kalm_bench import hookimpl
from kalm_bench.api import Reporter


def _tabulate(table: pd.DataFrame, tablefmt: str) -> str:
    from tabulate import tabulate

    flat = table.reset_index()
    # disable_numparse: cells are already formatted strings ("50.0 ± 3.1 (3)") and must stay as written.
    return tabulate(flat.values.tolist(), headers=[str(c) for c in flat.columns], tablefmt=tablefmt,
                    disable_numparse=True)


class MarkdownReporter(Reporter):
    name = "md"
    version = "1"
    extension = "md"
    description = "GitHub-flavoured Markdown (tabulate)"

    def render(self, table: pd.DataFrame, title: str | None = None) -> str:
        return (f"### {title}\n\n" if title else "") + _tabulate(table, "github") + "\n"


class CSVReporter(Reporter):
    name = "csv"
    version = "1"
    extension = "csv"
    description = "comma-separated values"

    def render(self, table: pd.DataFrame, title: str | None = None) -> str:
        buf = io.StringIO()
        table.reset_index().to_csv(buf, index=False)
        return buf.getvalue()


class LatexReporter(Reporter):
    name = "latex"
    version = "1"
    extension = "tex"
    description = "LaTeX tabular (booktabs)"

    def render(self, table: pd.DataFrame, title: str | None = None) -> str:
        return (f"% {title}\n" if title else "") + _tabulate(table, "latex_booktabs") + "\n"


@hookimpl
def register_reporters(register):
    register(MarkdownReporter)
    register(CSVReporter)
    register(LatexReporter)
