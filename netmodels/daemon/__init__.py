"""``twistd netmodels``: options, the status endpoint and the demo."""
