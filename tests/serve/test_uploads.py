"""Uploads to seewhy serve: size limits (413), the content decides and not the name, the decompression-bomb limit,
corrupt files answered 4xx with the loader's message (never a 500, never a traceback)."""

from __future__ import annotations

import io
import warnings

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

with warnings.catch_warnings():  # starlette's notice about httpx versions
    warnings.filterwarnings("ignore", message=".*httpx.*")
    from fastapi.testclient import TestClient

from seewhy.serve import create_app  # noqa: E402
from seewhy.serve.uploads import UploadError, decode_upload  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
MB = 1_000_000


def _encoded(fmt: str = "PNG", size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else (10, 200, 30)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_decoded_by_content_whatever_the_name(fmt: str) -> None:
    img = decode_upload(_encoded(fmt), "holiday.txt", max_bytes=MB)  # the name says text, the content an image
    assert img.mode == "RGB" and img.size == (40, 30)


@pytest.mark.parametrize(("data", "status", "words"), [
    (b"", 400, "empty"),
    (_encoded()[:45] + bytes([_encoded()[45] ^ 0xFF]) + _encoded()[46:], 422, "corrupt"),
    (b"GIF89a but not really an image at all" * 3, 415, "not an image"),
    (b"hello, I am a text file", 415, "not an image"),
    (_encoded("JPEG")[:300], 422, "truncated"),
])
def test_bad_uploads_get_the_loaders_message(data: bytes, status: int, words: str) -> None:
    with pytest.raises(UploadError) as info:
        decode_upload(data, "../../secret/cat.png", max_bytes=MB)
    assert info.value.status == status
    assert words in str(info.value) and "'cat.png'" in str(info.value)  # the upload's name, no server path


def test_size_and_pixel_limits() -> None:
    with pytest.raises(UploadError) as info:
        decode_upload(b"x" * 2000, "big.png", max_bytes=1000)
    assert info.value.status == 413 and "upload limit" in str(info.value)
    bomb = _encoded("PNG", (3000, 3000), "L")  # 9 megapixels in a few kB: the header is read before decoding
    assert len(bomb) < 100_000
    with pytest.raises(UploadError) as info:
        decode_upload(bomb, "bomb.png", max_bytes=MB, max_pixels=1_000_000)
    assert info.value.status == 422 and "decompression bomb" in str(info.value)


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = create_app(["tiny_cnn"], max_upload_mb=0.05, max_pixels=250_000)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_api_refuses_what_it_cannot_use_with_4xx(client: TestClient) -> None:
    cases = {
        "corrupt": (("cat.png", _encoded()[:45] + bytes([_encoded()[45] ^ 0xFF]) + _encoded()[46:]), 422),
        "bad header": (("cat.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100), 415),
        "text": (("notes.png", b"just some text, named .png"), 415),
        "empty": (("empty.jpg", b""), 400),
        "bomb": (("bomb.png", _encoded("PNG", (1000, 1000), "L")), 422),
        "too large": (("huge.bmp", b"B" * 60_000), 413),  # within the body slack: refused by the file check
        "far too large": (("huge.bmp", b"B" * 300_000), 413),  # refused by the body limit before it is read
    }
    for name, (upload, status) in cases.items():
        r = client.post("/api/predict", files={"image": upload})
        assert r.status_code == status, (name, r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "Traceback" not in detail and "/tmp" not in detail, (name, detail)
    r = client.post("/api/explain", files={"image": ("photo.exe", _encoded("JPEG"))}, data={"method": "saliency"})
    assert r.status_code == 200, r.text  # a real image with a misleading name is fine
    r = client.post("/api/predict", data={"model": "tiny_cnn"})
    assert r.status_code == 400 and "image" in r.json()["detail"]
