"""Reports built from RunResults only, whichever runner wrote them.

compare.py writes the run's comparison.md/.csv; ``peftlab report`` goes further: collect.py finds
the results, table.py and facts.py decide what to say, plots.py/svg.py draw it, render_md.py and
render_html.py write report.md and the self-contained report.html (write.py ties them together).
"""
