"""Seeing what a run learned: training curves and evaluation views (plots), explanations of single pictures
(explain) and one self-contained HTML report (html).

The report reads only the run record (run directory, saved evaluations) and the trained model; it never
retrains. Every plotting function returns a `Figure`: the PNG and the numbers behind it, so tests (and users)
can check what is drawn, not only that a file exists.
"""
