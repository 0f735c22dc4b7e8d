"""Corpus reports (`attnscope report`): head statistics and classes over many documents, in-process
or on Ray Data, and the comparison of two reports.

    corpus.py     which files --data names, documents and their stable ids
    tracer.py     documents -> per-document records (one Extractor; both run paths use it)
    records.py    the records' parquet parts in OUT/parts: resume state and the aggregates' input
    run.py        settings, the in-process loop (progress, checkpoints), the shared last step
    ray_run.py    the trace step on Ray Data (readers, an actor pool, write_parquet)
    aggregate.py  records -> report.json and heads.parquet
    svg.py, html.py  the self-contained report.html and compare.html
    compare.py, rules.py  --compare A B and its --fail-if rules
    cli.py        the `report` subcommand
"""
