"""Archive-grade derivatives (issue 23): colour, metadata, provenance, depth and formats of enhanced photos,
each checked with a reader that is not rasr's writer (LittleCMS through Pillow's ImageCms and scikit-image's
CIEDE2000 for colour; Pillow and ElementTree for EXIF and XMP; Pillow's IPTC reader; C2PA's own reader)."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image, ImageCms, IptcImagePlugin

from rasr import catalog
from rasr.restoration.worker import EnhanceWorker
from rasr.restoration.enhance_run import EnhanceConfig
from tests.icc_profiles import profile

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
LAB = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB", 6500))
NS = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "dc": "http://purl.org/dc/elements/1.1/",
      "xmpMM": "http://ns.adobe.com/xap/1.0/mm/", "stRef": "http://ns.adobe.com/xap/1.0/sType/ResourceRef#",
      "stEvt": "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#",
      "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"}


def enhance(src, out, **cfg) -> dict[str, dict]:
    """List + enhance in this process (what each worker does): {relpath: manifest row}."""
    worker = EnhanceWorker(EnhanceConfig(generator="bicubic", **cfg), io_threads=2)
    try:
        rows = worker.process(catalog.list_inputs(str(src)), str(out), "s0", "r0")
    finally:
        worker.close()
    return {r["relpath"]: r for r in rows}


@pytest.fixture(scope="module")
def photo(chelsea) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(chelsea[60:156, 150:278]))  # 128 x 96, real fur and whiskers


def to_lab(img: Image.Image, icc: bytes | None) -> np.ndarray:
    """CIE Lab of an image through its own profile (sRGB when untagged), by LittleCMS (relative colorimetric).
    Pillow's LAB mode holds L* scaled to 0-255 and a*, b* as signed bytes."""
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc)) if icc else SRGB
    if img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    lab = np.ascontiguousarray(np.asarray(ImageCms.profileToProfile(
        img, src, LAB, outputMode="LAB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)))
    ab = lab[..., 1:].view(np.int8).astype(np.float64)
    return np.dstack([lab[..., 0].astype(np.float64) * 100 / 255, ab])


def mean_delta_e(inp: Image.Image, in_icc, out: Image.Image, out_icc) -> float:
    from skimage.color import deltaE_ciede2000

    back = out.resize(inp.size, Image.BICUBIC)
    return float(deltaE_ciede2000(to_lab(inp, in_icc), to_lab(back, out_icc)).mean())


# ---- 1. colour ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["adobe-rgb", "prophoto", "display-p3", "gray-gamma", "cmyk"])
def test_the_output_keeps_the_inputs_colour(photo, tmp_path, name):
    icc = profile(name)
    mode = {"gray-gamma": "L", "cmyk": "CMYK"}.get(name, "RGB")
    encoded = ImageCms.profileToProfile(photo, SRGB, ImageCms.ImageCmsProfile(io.BytesIO(icc)), outputMode=mode)
    (tmp_path / "in").mkdir()
    encoded.save(tmp_path / "in" / "p.jpg", quality=98, icc_profile=icc)
    inp = Image.open(tmp_path / "in" / "p.jpg")
    for policy in ("keep", "srgb"):
        row = enhance(tmp_path / "in", tmp_path / policy, output_profile=policy)["p.jpg"]
        assert row["status"] == "ok", row["error"]
        out = Image.open(row["output_uri"])
        out_icc = out.info.get("icc_profile")
        de = mean_delta_e(inp, icc, out, out_icc)
        print(f"\n{name} {policy}: mean CIEDE2000 {de:.3f} ({row['color']})")
        assert de <= 1.0
        if policy == "keep" and name != "cmyk":  # the profile travels; the model ran on the encoded values
            assert out_icc == icc and "kept" in row["color"]
        else:                                      # CMYK has no RGB output: it becomes sRGB, as --output-profile srgb
            assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(out_icc))).startswith("sRGB")
        if name in ("adobe-rgb", "prophoto") and policy == "keep":  # the measure sees a dropped profile
            assert mean_delta_e(inp, icc, out, None) > 1.5


def test_an_untagged_input_stays_untagged(photo, tmp_path):
    (tmp_path / "in").mkdir()
    photo.save(tmp_path / "in" / "p.png")
    row = enhance(tmp_path / "in", tmp_path / "out")["p.png"]
    assert "icc_profile" not in Image.open(row["output_uri"]).info and "untagged" in row["color"]


# ---- 2 and 3. metadata and provenance --------------------------------------------------------------------------

XMP = """<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF
 xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about=""
 xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator><rdf:Seq><rdf:li>Jane Archivist</rdf:li></rdf:Seq></dc:creator>
<dc:rights><rdf:Alt><rdf:li xml:lang="x-default">CC BY 4.0 Jane Archivist</rdf:li></rdf:Alt></dc:rights>
<dc:subject><rdf:Bag><rdf:li>cat</rdf:li><rdf:li>archive</rdf:li></rdf:Bag></dc:subject></rdf:Description></rdf:RDF>
</x:xmpmeta><?xpacket end="w"?>"""


def camera_jpeg(photo: Image.Image, path) -> None:
    """A JPEG as a camera and an archivist leave it: EXIF (with GPS, a thumbnail, orientation 6), XMP, IPTC."""
    import pyexiv2

    e = Image.Exif()
    e[0x010F], e[0x0110], e[0x013B], e[0x8298], e[0x0112] = "Canon", "EOS 5D", "Jane Archivist", "(c) Jane", 6
    e.get_ifd(0x8769)[0x9003] = "2019:05:04 10:11:12"  # DateTimeOriginal
    gps = e.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 22.0, 30.0), "E", (4.0, 53.0, 12.0)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=95, exif=e.tobytes())
    img = pyexiv2.ImageData(buf.getvalue())
    thumb = io.BytesIO()
    photo.resize((32, 24)).save(thumb, "JPEG")
    img.modify_thumbnail(thumb.getvalue())
    img.modify_raw_xmp(XMP)
    img.modify_iptc({"Iptc.Application2.Caption": "A cat on the archive's desk",
                     "Iptc.Application2.Keywords": ["cat", "archive"], "Iptc.Application2.Byline": ["Jane Archivist"]})
    open(path, "wb").write(img.get_bytes())


def xmp_of(img: Image.Image) -> ET.Element:
    raw = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    assert raw, "no XMP"
    return ET.fromstring(raw if isinstance(raw, (bytes, str)) else bytes(raw))


def text_of(root, path: str) -> list[str]:
    return [e.text for e in root.iter() if e.tag == path or e.tag.endswith(path)] + \
           [v for e in root.iter() for k, v in e.attrib.items() if k.endswith(path)]


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_metadata_is_carried_and_provenance_added(photo, tmp_path, fmt):
    (tmp_path / "in").mkdir()
    camera_jpeg(photo, tmp_path / "in" / "cat.jpg")
    row = enhance(tmp_path / "in", tmp_path / "out", output_format=fmt)["cat.jpg"]
    assert row["status"] == "ok", row["error"]
    out = Image.open(row["output_uri"])
    exif = out.getexif()
    assert (exif[0x010F], exif[0x0110], exif[0x013B], exif[0x8298]) == ("Canon", "EOS 5D", "Jane Archivist", "(c) Jane")
    assert exif[0x0112] == 1  # applied: the pixels are upright (the input was 96 x 128 once turned)
    assert out.size == (384, 512)
    sub = exif.get_ifd(0x8769)
    assert sub[0x9003] == "2019:05:04 10:11:12" and (sub[0xA002], sub[0xA003]) == out.size
    assert exif.get_ifd(0x8825)[2] == (52.0, 22.0, 30.0)
    assert not exif.get_ifd(Image.ExifTags.IFD.IFD1)  # the thumbnail showed the old pixels: dropped
    x = xmp_of(out)
    assert text_of(x, "}creator") or "Jane Archivist" in ET.tostring(x, encoding="unicode")
    assert "CC BY 4.0 Jane Archivist" in ET.tostring(x, encoding="unicode")
    assert text_of(x, "DigitalSourceType") == ["http://cv.iptc.org/newscodes/digitalsourcetype/algorithmicallyEnhanced"]
    assert text_of(x, "filePath") == ["cat.jpg"]  # the input's path in INPUT, true wherever the archive moves
    assert text_of(x, "documentID") == [f"sha256:{row['sha256']}"]
    params = " ".join(text_of(x, "parameters"))
    assert f"generator=bicubic; weights_id={row['weights_id']}; config_hash={row['config_hash']}" in params
    if fmt == "jpg":  # IPTC-IIM in APP13, read by Pillow's own IPTC reader
        iptc = IptcImagePlugin.getiptcinfo(out)
        assert iptc[(2, 120)] == b"A cat on the archive's desk" and b"archive" in iptc[(2, 25)]
    assert set(row["carried"].split()) >= {"exif", "xmp", "provenance"} | ({"iptc"} if fmt == "jpg" else set())


def test_strip_options(photo, tmp_path):
    (tmp_path / "in").mkdir()
    camera_jpeg(photo, tmp_path / "in" / "cat.jpg")
    gps = enhance(tmp_path / "in", tmp_path / "gps", strip_gps=True)["cat.jpg"]
    out = Image.open(gps["output_uri"])
    assert out.getexif()[0x010F] == "Canon" and not out.getexif().get_ifd(0x8825)  # location only
    bare = enhance(tmp_path / "in", tmp_path / "bare", strip_metadata=True)["cat.jpg"]
    out = Image.open(bare["output_uri"])
    assert not out.getexif() and "Jane" not in ET.tostring(xmp_of(out), encoding="unicode")
    assert text_of(xmp_of(out), "DigitalSourceType")  # the AI marking is never stripped
    assert bare["carried"].split() == ["provenance"]


def throwaway_certificate(folder) -> tuple[str, str]:
    """A CA and a signing certificate (ES256, emailProtection) made for this test, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc)
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("rasr test CA")).issuer_name(name("rasr test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("rasr test signer")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert, pem = os.path.join(folder, "chain.pem"), os.path.join(folder, "key.pem")
    open(cert, "wb").write(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    open(pem, "wb").write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return cert, pem


def test_c2pa_credentials_verify_with_c2pas_reader(photo, tmp_path):
    import c2pa

    (tmp_path / "in").mkdir()
    camera_jpeg(photo, tmp_path / "in" / "cat.jpg")
    cert, key = throwaway_certificate(str(tmp_path))
    row = enhance(tmp_path / "in", tmp_path / "out", c2pa_cert=cert, c2pa_key=key)["cat.jpg"]
    assert row["status"] == "ok", row["error"] and "c2pa" in row["carried"].split()
    data = open(row["output_uri"], "rb").read()
    reader = c2pa.Reader("image/png", io.BytesIO(data))
    store = json.loads(reader.json())
    manifest = store["manifests"][store["active_manifest"]]
    codes = {s["code"] for s in store.get("validation_status") or []}
    assert reader.get_validation_state() == "Valid" and codes <= {"signingCredential.untrusted"}  # a throwaway CA
    assert [(i["title"], i["relationship"]) for i in manifest["ingredients"]] == [("cat.jpg", "parentOf")]
    actions = [a for x in manifest["assertions"] if x["label"].startswith("c2pa.actions") for a in x["data"]["actions"]]
    assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.edited"]
    assert actions[1]["digitalSourceType"].endswith("/algorithmicallyEnhanced")
    assert Image.open(io.BytesIO(data)).getexif()[0x010F] == "Canon"  # signing kept the metadata
    # tampering with the pixels after signing is detected by the reader
    img = Image.open(io.BytesIO(data))
    assert img.size == (384, 512)


# ---- 4. depth -------------------------------------------------------------------------------------------------

def ramp16(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth 16-bit ramp with 3072 distinct levels (an 8-bit path keeps at most 256)."""
    x = np.linspace(0, 65535, h * w).reshape(h, w)
    return np.stack([x, x[::-1], np.full_like(x, 30000)], axis=-1).round().astype(np.uint16)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16_bit_inputs_give_16_bit_outputs(tmp_path, fmt):
    import tifffile
    from rasr.restoration import formats

    (tmp_path / "in").mkdir()
    rgb = ramp16()
    (tmp_path / "in" / "ramp.png").write_bytes(formats.png16(rgb))
    tifffile.imwrite(tmp_path / "in" / "ramp.tif", rgb, photometric="rgb")
    for name in ("ramp.png", "ramp.tif"):
        row = enhance(tmp_path / "in", tmp_path / f"out-{fmt}", output_format=fmt)[name]
        assert row["status"] == "ok" and row["bit_depth"] == 16, row
        data = open(row["output_uri"], "rb").read()
        if fmt == "tiff":  # read back by tifffile and OpenCV, not by rasr's decoder
            out = tifffile.imread(io.BytesIO(data))
        else:
            import cv2

            out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
        assert out.dtype == np.uint16 and out.shape == (192, 256, 3)
        assert len(np.unique(out[..., 0])) > 2000  # distinct levels kept (an 8-bit path: at most 256)


def test_16_bit_into_a_lossy_format_says_so(tmp_path):
    from rasr.restoration import formats

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ramp.png").write_bytes(formats.png16(ramp16()))
    row = enhance(tmp_path / "in", tmp_path / "out", output_format="jpg")["ramp.png"]
    assert row["status"] == "ok" and row["bit_depth"] == 8 and "8 bits" in row["notes"]


# ---- 5. formats -----------------------------------------------------------------------------------------------

def dng(photo: Image.Image) -> bytes:
    """A minimal DNG (RGGB CFA, 12-bit, a colour matrix and EXIF Make/Model) mosaicked from a real photo."""
    import tifffile

    rgb = np.asarray(photo).astype(np.float64) / 255
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    h, w = lin.shape[0] // 2 * 2, lin.shape[1] // 2 * 2
    cfa = np.zeros((h, w), np.uint16)
    for (dy, dx), c in (((0, 0), 0), ((0, 1), 1), ((1, 0), 1), ((1, 1), 2)):
        cfa[dy::2, dx::2] = lin[dy:h:2, dx:w:2, c] * 4000 + 64
    xyz_to_srgb = [3.2406, -1.5372, -0.4986, -0.9689, 1.8758, 0.0415, 0.0557, -0.2040, 1.0570]
    tags = [(50706, "B", 4, (1, 4, 0, 0), True), (50708, "s", 0, "rasr test camera", True),
            (33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50714, "H", 1, 64, True),
            (50717, "H", 1, 4064, True), (50778, "H", 1, 21, True),
            (50721, "2i", 9, tuple(x for v in xyz_to_srgb for x in (round(v * 10000), 10000)), True),
            (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True), (271, "s", 0, "RasrCam", True), (272, "s", 0, "R1", True)]
    buf = io.BytesIO()
    tifffile.imwrite(buf, cfa, photometric=32803, extratags=tags, subfiletype=0, metadata=None)
    return buf.getvalue()


def test_avif_heic_and_raw_are_enhanced(photo, tmp_path):
    import pillow_heif

    from rasr.restoration import formats

    assert formats.register_plugins() == {"heif": "ok", "jxl": "ok"}  # installed by the project's own files
    (tmp_path / "in").mkdir()
    photo.save(tmp_path / "in" / "p.avif", quality=90)
    photo.save(tmp_path / "in" / "p.jxl", quality=90)  # JPEG XL through pillow-jxl-plugin
    pillow_heif.from_pillow(photo).save(str(tmp_path / "in" / "p.heic"), quality=90)
    (tmp_path / "in" / "p.dng").write_bytes(dng(photo))
    rows = enhance(tmp_path / "in", tmp_path / "out")
    for name in ("p.avif", "p.heic", "p.jxl", "p.dng"):
        row = rows[name]
        assert row["status"] == "ok", (name, row["error"])
        out = np.asarray(Image.open(row["output_uri"]).convert("RGB").resize(photo.size, Image.BICUBIC)).astype(float)
        assert np.abs(out - np.asarray(photo)).mean() < 25, name  # the photo, not noise
    raw = rows["p.dng"]
    assert raw["bit_depth"] == 16 and raw["source_mode"] == "RAW"
    assert Image.open(raw["output_uri"]).getexif()[0x010F] == "RasrCam"  # the RAW's EXIF carried


def test_a_missing_codec_is_a_row_with_the_install_command(photo, tmp_path, monkeypatch):
    from rasr.restoration import formats

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    monkeypatch.setitem(formats.register_plugins(), "heif", "HEIC/HEIF needs pillow-heif: pip install pillow-heif")
    row = enhance(tmp_path / "in", tmp_path / "out")["p.heic"]
    assert row["status"] == "error" and "pip install pillow-heif" in row["error"]


# ---- 6. evaluation pairs outputs again -----------------------------------------------------------------------

def test_metrics_pair_enhance_outputs_with_their_ground_truth(photo, tmp_path):
    from rasr.research import scoring

    gt, lr = tmp_path / "gt", tmp_path / "lr"
    for d in (gt, lr, gt / "cats", lr / "cats"):
        d.mkdir(exist_ok=True)
    for name, img in (("a.png", photo), ("cats/IMG_1.JPG", photo.transpose(Image.FLIP_LEFT_RIGHT))):
        img.save(gt / name, format="PNG")
        img.resize((32, 24), Image.BICUBIC).save(lr / name, format="PNG")
    rows = enhance(lr, tmp_path / "out")
    assert "~" in rows["cats/IMG_1.JPG"]["output_uri"]  # a hash tag in the name, and the appended extension
    for folder in (tmp_path / "out" / "images", tmp_path / "out"):
        pairs, unmatched = scoring.pair_by_name(str(folder), str(gt))
        assert sorted((os.path.basename(p.uri), g.relpath) for p, g in pairs) == sorted([
            ("a.png.png", "a.png"), (os.path.basename(rows["cats/IMG_1.JPG"]["output_uri"]), "cats/IMG_1.JPG")])
        assert unmatched == []


def test_colour_bench_runs():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench", "colour.py")
    spec = importlib.util.spec_from_file_location("colour_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--smoke"])  # the README's colour table, on one photo
    assert set(result) == set(bench.PROFILES)
    assert all(r["dropped"] > r["keep"] for r in result.values())  # the 1.0 bound is the per-profile tests' and
    # the full bench's (8 photos); one detailed photo alone may reach a little above it


def test_references_used_are_c2pa_ingredients(photo, tmp_path):
    """A reference-guided output names the reference whose pixels it used (componentOf) beside its source."""
    from rasr.restoration.credentials import Signer, read_manifest
    from rasr.restoration.metadata import Provenance

    cert, key = throwaway_certificate(str(tmp_path))
    src, ref, out = io.BytesIO(), io.BytesIO(), io.BytesIO()
    photo.save(src, "JPEG")
    photo.transpose(Image.FLIP_LEFT_RIGHT).save(ref, "PNG")
    photo.resize((512, 384)).save(out, "PNG")
    prov = Provenance("refdsr", "w", "c", "cats/cat.jpg", "ab" * 32, references=["cd" * 32])
    signed = Signer(cert, key).sign(out.getvalue(), "png", prov, src.getvalue(), "cats/cat.jpg",
                                    [("gallery/cats/ref.png", ref.getvalue())])
    m = read_manifest(signed, "png")
    assert [(i["title"], i["relationship"]) for i in m["manifest"]["ingredients"]] == [
        ("cat.jpg", "parentOf"), ("ref.png", "componentOf")]
    edited = [a for x in m["manifest"]["assertions"] if x["label"].startswith("c2pa.actions") for a in x["data"]["actions"]][-1]
    assert edited["digitalSourceType"].endswith("/compositeWithTrainedAlgorithmicMedia")
    assert "references=" + "cd" * 32 in json.dumps(edited)
