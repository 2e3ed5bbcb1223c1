"""The network: the attention-MIL model as written, its hand-fused CPU passes (``fused``,
``fused_paper``, ``fast``), mixed precision and the device paths. Torch lives here."""
