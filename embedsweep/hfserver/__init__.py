"""The built-in OpenAI-compatible embedding server over sentence-transformers / transformers.

``python -m embedsweep.hfserver --model DIR --port P`` serves ``/v1/embeddings``, ``/v1/models``
and ``/health`` on 127.0.0.1. Token counts include special tokens (as vLLM counts them); an input
longer than the limit gets HTTP 400 with a vLLM-shaped message, never a silent truncation;
concurrent requests are batched together by one model worker (see ``batcher``).
"""
