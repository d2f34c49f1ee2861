"""The notebooks here run on Databricks through `nutter run`, not under pytest.

Their names start with test_ because Nutter discovers notebooks by that prefix; importing one
as a pytest module would fail on the `dbutils` global that only a notebook runtime provides.
tests/unit/devops/test_nutter.py checks their format and runs them through the local runtime.
"""
collect_ignore_glob = ["test_*.py", "*_test.py"]
