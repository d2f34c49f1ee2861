"""Local Databricks runtime: runs source-format notebooks and the bundle's jobs on a laptop.

Notebooks see the same globals as on Databricks (``spark``, ``dbutils``, ``display``,
``displayHTML``); jobs, read from the bundle for a target, run task by task in dependency
order with task values passed between tasks. Everything the runtime writes lives under ``MLOPS_HOME``.
"""
