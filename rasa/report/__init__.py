"""Reports: the RaSa paper's numbers as data, LaTeX Tables 1-8 with ours beside them, Figs. 4-5,
CMMT vs supervised (issue #6) and training curves.

- :mod:`rasa.report.paper` — the paper's Tables 1-8 (``paper_results.csv``) and Fig. 4 defaults
- :mod:`rasa.report.results` — our metrics JSON files as :class:`~rasa.report.results.Run`
- :mod:`rasa.report.tables` — the tables as declarations (rows, rules, published numbers)
- :mod:`rasa.report.aggregate` — our runs into the tables' cells (mean, std, seeds)
- :mod:`rasa.report.latex` — booktabs tables, "paper | ours" per metric
- :mod:`rasa.report.build` — the report, one function per section of its index
- :mod:`rasa.report.figures` — Fig. 4 sweeps, Fig. 5 retrieval grids
- :mod:`rasa.report.curves` — training runs: curves, CMMT pseudo-label quality
- :mod:`rasa.report.cli` — ``rasa report``
"""
