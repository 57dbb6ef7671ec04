"""Table formats: Markdown, CSV and LaTeX."""

from __future__ import annotations

import io

import pandas as pd

from kalm_bench import hookimpl
from kalm_bench.api import Reporter


class MarkdownReporter(Reporter):
    name = "md"
    version = "1"
    extension = "md"
    description = "GitHub-flavoured Markdown (tabulate)"

    def render(self, table: pd.DataFrame, title: str | None = None) -> str:
        from tabulate import tabulate

        flat = table.reset_index()
        body = tabulate(flat.values.tolist(), headers=[str(c) for c in flat.columns], tablefmt="github",
                        disable_numparse=True)
        return (f"### {title}\n\n" if title else "") + body + "\n"


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
        from tabulate import tabulate

        flat = table.reset_index()
        body = tabulate(flat.values.tolist(), headers=[str(c) for c in flat.columns], tablefmt="latex_booktabs",
                        disable_numparse=True)
        return (f"% {title}\n" if title else "") + body + "\n"


@hookimpl
def register_reporters(register):
    register(MarkdownReporter)
    register(CSVReporter)
    register(LatexReporter)
