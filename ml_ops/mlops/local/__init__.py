"""Local Databricks runtime: runs source-format notebooks and Jobs API 2.1 job files on a laptop.

Notebooks see the same globals as on Databricks (``spark``, ``dbutils``, ``display``,
``displayHTML``); job files run task by task in dependency order with task values
passed between tasks. Everything the runtime writes lives under ``MLOPS_HOME``.
"""
