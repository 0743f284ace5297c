"""embedsweep: benchmark embedding models across serving engines and GPU pools.

The plain library: it never imports Prefect (flows/ and tasks/ wire it in)."""

__version__ = "0.1.0"
