"""A small Kubernetes kit: the API calls the agent makes, as dicts with our errors, custom resources named
by a ``CustomResource`` (``api``), list + watch with re-list on 410 (``watching``), Events (``events``)
and Kubernetes' time format (``times``).

It knows nothing of Velero, the controller or the data path (an import-linter contract).
"""
