"""``flemme compare``: fair encoder studies in one command.

A study crosses rows (an encoder family with an architecture, or a reference architecture
that takes no encoder, each with its own options) with datasets and seeds. Every cell is an
ordinary run folder trained by the same trainer as ``flemme train``, in its own process;
the study folder holds the cells, the resolved study file and the report.

Modules, one job each (all import-cheap at the top; torch only where a model is built):

* :mod:`.study` -- the study file / flags -> rows, datasets, seeds, budget; the cells;
* :mod:`.budget` -- ``--budget``, ``--shard`` and ``match: params`` (width scaling);
* :mod:`.depends` -- rows that train from other rows' cells (``${cells.ROW.checkpoint}``);
* :mod:`.cells` -- running a cell (lock, resume, refuse a changed config, progress);
* :mod:`.measure` -- inside a cell's process: train, evaluate per item, measure cost;
* :mod:`.stats` -- mean ± std and the paired hierarchical bootstrap;
* :mod:`.report` / :mod:`.plot` -- Markdown, CSV, JSON and the Pareto PNG;
* :mod:`.cli` -- the click command.
"""
