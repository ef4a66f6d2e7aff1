"""The command-line tools: ``densezoo-train``, ``densezoo-upscale``, ``densezoo-export``, ``densezoo-validate``,
``densezoo-eval-sr``, ``densezoo-flops``, ``densezoo-latency`` and ``densezoo-model-table`` (also
``python -m densezoo.cli.<tool>`` and ``python tools/<tool>.py``)."""
