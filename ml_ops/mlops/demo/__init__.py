"""``make demo``: the whole loop on a laptop, through the bundle's jobs and the local runtime.

:mod:`~mlops.demo.story` trains, scores and publishes; :mod:`~mlops.demo.loop` monitors, lets
drift arrive and retrains; :mod:`~mlops.demo.online` serves the Champion. Run it with
``python -m mlops.demo``.
"""
