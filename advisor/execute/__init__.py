"""The execute stage: plans become runs. The run directory and resume (runner), every strategy on one
split (compare), and what a finished run serves: predictions and exports.

Imports every stage below it, strategies and advisor.report; only advisor.cli imports it.
"""
