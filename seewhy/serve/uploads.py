"""Upload checks for ``seewhy serve``: a size limit on the request body and on each file, and decoding with
:func:`seewhy.images.load_image` (the content decides, not the name: EXIF orientation, transparency, the
decompression-bomb limit), each failure an :class:`UploadError` with an HTTP status and the loader's message."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from PIL import Image

from .. import images

__all__ = ["DEFAULT_MAX_MB", "DEFAULT_MAX_PIXELS", "BodyLimit", "UploadError", "decode_upload"]

DEFAULT_MAX_MB = 20.0
#: pixels (width x height) an upload may have: 40 megapixels, far below what a bomb needs to hurt
DEFAULT_MAX_PIXELS = 40_000_000
#: room for the multipart framing and the form's other fields on top of the file size limit
_FORM_SLACK = 64 * 1024


class UploadError(ValueError):
    """An upload that cannot be used: ``status`` is the HTTP code (400 empty, 413 too large, 415 not an image,
    422 corrupt or too many pixels), the message says what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _mb(n: float) -> str:
    return f"{n:g} MB"


def decode_upload(data: bytes, filename: str | None, *, max_bytes: int,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The uploaded bytes as an RGB image, decoded by :func:`seewhy.images.load_image`.

    Raises:
        UploadError: empty (400), over ``max_bytes`` (413), not an image (415), corrupt, truncated or over
            ``max_pixels`` (422); the message is the loader's, naming the upload by its file name.
    """
    shown = os.path.basename(filename or "") or "upload"
    if not data:
        raise UploadError(400, f"cannot load image {shown!r}: the upload is empty (0 bytes); choose an image file")
    if len(data) > max_bytes:
        raise UploadError(413, f"cannot load image {shown!r}: {len(data) / 1e6:.1f} MB is more than the upload "
                               f"limit of {_mb(max_bytes / 1e6)} (seewhy serve --max-upload-mb)")
    # load_image reads a path: the bytes go to a private temporary file with no name suffix (content decides)
    fd, path = tempfile.mkstemp(prefix="seewhy-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return images.load_image(path, max_pixels=max_pixels)
        except images.ImageError as err:
            raise UploadError(_status(err), f"cannot load image {shown!r}: {err.problem}") from None
    finally:
        os.unlink(path)


def _status(err: images.ImageError) -> int:
    if isinstance(err.__cause__, Image.UnidentifiedImageError) or err.problem.startswith("not an image"):
        return 415
    if "empty" in err.problem:
        return 400
    return 422


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` (by its Content-Length, or counted as it streams in) is
    answered with 413 before it is read further, so a huge upload never reaches the disk or the memory."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int,
                 slack: int = _FORM_SLACK) -> None:
        self.app, self.max_bytes, self.limit = app, max_bytes, max_bytes + slack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            declared = int(length) if length is not None else None
        except ValueError:
            declared = None
        if declared is not None and declared > self.limit:
            await self._refuse(send)
            return
        seen = 0
        over = started = False

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge  # stops the reading; the app's error answer is replaced by the 413 below
            return message

        async def replaced(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if over:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, replaced)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"the request is larger than the upload limit of {_mb(self.max_bytes / 1e6)} "
                                     "(seewhy serve --max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
