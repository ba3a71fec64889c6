"""A clean stderr for ``acestep generate``: our own bar and messages, not third-party noise.

Each switch is aimed at one known source: two library deprecation warnings (below), transformers'
and diffusers' loading/saving bars and info logs, and acestep's own INFO log lines (shown again
with ``--verbose``).
"""

from __future__ import annotations

import logging
import sys
import warnings

# Deprecations raised inside libraries, none of which the user can act on: torch's weight_norm, which
# diffusers' Oobleck VAE still calls, and transformers 5's rename of past_key_values (the 5 Hz LM's
# decoding loop passes it by the name every supported transformers version accepts).
KNOWN_DEPRECATIONS = (
    r"`torch\.nn\.utils\.weight_norm` is deprecated",
    r"`past_key_values` is deprecated",
)


# torch's pytree registry warns (at WARNING, in its own log format) about each enum torchao
# registers when it is imported, which transformers', diffusers' and peft's torchao integrations do
# whenever it is installed (the quant extra).
QUIET_LOGGERS = ("torch.utils._pytree",)


def silence_third_party() -> None:
    """Before anything loads: no weight_norm FutureWarning, no transformers/diffusers bars or logs."""
    for message in KNOWN_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (transformers_logging, diffusers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def configure_logs(verbose: bool) -> None:
    """acestep's log lines: warnings and errors only, unless ``--verbose``. The sink looks up
    ``sys.stderr`` per message, so a replaced stderr (tests, redirection) still receives them."""
    from loguru import logger

    logger.remove()
    logger.add(
        lambda message: sys.stderr.write(message),
        level="INFO" if verbose else "WARNING",
        format=lambda record: record["level"].name.lower() + ": {message}\n{exception}",
    )
