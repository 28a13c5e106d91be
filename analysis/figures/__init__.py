"""The comparison figures, by kind; `analysis.plots.PLOTS` lists them in report order."""
