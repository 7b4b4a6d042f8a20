"""Pretrained weights from the internet, or ``None`` with one sentence when there is none.

:func:`download_state_dict` is the one download path of minivit's pretrained models (the
official DETR-R50 in :mod:`minivit.detr`, torchvision's ImageNet ViT-B/16 in :mod:`minivit.vit`):
``torch.hub`` caches the file in its hub directory (``~/.cache/torch/hub/checkpoints`` or
``$TORCH_HOME``) and checks the SHA-256 prefix in the file name. Offline, a notebook cell
prints one line and falls back to a local model instead of a stack trace or a long hang.
"""
from __future__ import annotations

import contextlib
import io
import socket
import sys
from pathlib import Path

import torch


class _AnnounceOnFirstWrite(io.TextIOBase):
    """Stands in for stderr: writes ``line`` to ``out`` before the first text, then passes all to ``stream``."""

    def __init__(self, stream, out, line: str):
        self.stream, self.out, self.line = stream, out, line

    def write(self, text: str) -> int:
        if self.line is not None and text:
            self.out.write(self.line + "\n")
            self.out.flush()
            self.line = None
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def download_state_dict(url: str, what: str, size: str | None = None, timeout_s: float = 10.0) -> dict | None:
    """The state dict (or checkpoint dict) at ``url``, downloaded once with ``torch.hub``; ``None`` offline.

    ``what`` names the weights in the messages ("the official DETR-R50 weights"); ``size`` (e.g.
    "about 159 MB") is added to the announcement printed when the download starts, above the
    progress bar. Cached files load quietly. Every failure (no internet, a timeout after
    ``timeout_s`` seconds without an answer, an HTTP error, a broken file) prints
    ``"<what> could not be downloaded (<error type>)."`` and returns ``None``.
    """
    from minivit.runtime import display_path

    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    file_name = url.rsplit("/", 1)[-1]
    hub_checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    size = f", {size}" if size else ""
    announcement = (
        f"Downloading {what} {file_name}{size} from {url.split('/')[2]} into {display_path(hub_checkpoints)} (once)"
    )
    # torch.hub names the absolute local path on stdout: silence that, and announce the download
    # ourselves when its progress bar (on stderr) starts, so a failed connection stays one sentence.
    download = not (hub_checkpoints / file_name).exists()
    errors = _AnnounceOnFirstWrite(sys.stderr, sys.stdout, announcement) if download else io.StringIO()
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
            return torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=download, check_hash=True, weights_only=True
            )
    except Exception as error:  # no internet, timeout, HTTP error, broken file: all mean "not available"
        print(f"{what[:1].upper()}{what[1:]} could not be downloaded ({type(error).__name__}).")
        return None
    finally:
        socket.setdefaulttimeout(previous_timeout)
