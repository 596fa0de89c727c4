"""What an enhanced photo carries back into the archive: the source's metadata, and what was done to it.

    src = read_source(data)                               # EXIF, XMP, IPTC and ICC of the input file
    exif = output_exif(src.exif, width, height)           # Orientation 1, new pixel size, no thumbnail
    data = add_xmp_iptc(encoded, fmt, src, provenance)    # XMP merged + provenance, IPTC-IIM for JPEG

Which library writes what, and why:
- Pillow writes the ICC profile and EXIF while encoding, each in the format's own container (JPEG APP1
  and APP2, PNG iCCP and eXIf, WebP ICCP and EXIF chunks); 16-bit PNG and TIFF get them from
  rasr/restoration/images.py's own writers.
- exiv2 (through `pyexiv2`, a maintained binding of the reference metadata library) writes XMP (JPEG
  APP1, PNG iTXt, WebP XMP chunk, TIFF tag 700) and IPTC-IIM (JPEG APP13): Pillow cannot merge XMP
  or write IPTC at all.

Provenance (every output, with or without the source's metadata): XMP `Iptc4xmpExt:DigitalSourceType`,
`xmpMM:DerivedFrom` (the source's path in INPUT and its sha256) and an `xmpMM:History` entry (rasr version, generator,
weights_id, config_hash, the references used). The IPTC term per generator (cv.iptc.org/newscodes/
digitalsourcetype, definitions read 2026-12):
- bicubic: `algorithmicallyEnhanced` ("minor augmentation or correction by algorithm"): no trained
  model, no detail that was not in the photo.
- realesrgan, osediff, refdsr: `compositeWithTrainedAlgorithmicMedia` ("mix or composite of one or more
  pieces of media, at least one of which is trained algorithmic media"): the photo, with detail a
  trained model synthesised over all of it; a reference-guided model (refdsr) also names its
  references in the history and, with C2PA, as ingredients.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

IPTC_DST = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SOURCE_TYPES = {"bicubic": "algorithmicallyEnhanced", "realesrgan": "compositeWithTrainedAlgorithmicMedia",
                "osediff": "compositeWithTrainedAlgorithmicMedia", "refdsr": "compositeWithTrainedAlgorithmicMedia"}
DEFAULT_SOURCE_TYPE = "compositeWithTrainedAlgorithmicMedia"  # a custom generator: assume a trained model
GPS_IFD = 0x8825
EXIF_IFD = 0x8769
_EXIV2 = threading.Lock()  # exiv2's XMP toolkit is not safe to initialise from several threads at once


def source_type(generator: str, composed_of_captures: bool = False) -> str:
    """The IPTC digital source type URI for a generator's outputs. With a same-scene reference's detail in them,
    an output is a composite of two captures: `compositeCapture` when no trained model made pixels (bicubic),
    else still `compositeWithTrainedAlgorithmicMedia` (the history names both captures)."""
    kind = SOURCE_TYPES.get(generator, DEFAULT_SOURCE_TYPE)
    if composed_of_captures and kind == "algorithmicallyEnhanced":
        kind = "compositeCapture"
    return IPTC_DST + kind


@dataclass
class SourceMeta:
    """The metadata of an input file, as found (empty where it has none or its format has no such block)."""

    exif: bytes | None = None           # TIFF-structured EXIF (no "Exif\\0\\0" prefix)
    xmp: str | None = None              # the raw XMP packet
    iptc: dict = field(default_factory=dict)  # IPTC-IIM datasets (pyexiv2 keys)

    @property
    def kinds(self) -> list[str]:
        return [k for k, v in (("exif", self.exif), ("xmp", self.xmp), ("iptc", self.iptc)) if v]


def read_source(data: bytes, exif: bytes | None = None) -> SourceMeta:
    """EXIF (from Pillow's decoding, `exif`, else exiv2), XMP and IPTC of an input file's bytes."""
    meta = SourceMeta(exif=_strip_exif_header(exif) if exif else None)
    try:
        import pyexiv2

        with _EXIV2:
            img = pyexiv2.ImageData(data)
            try:
                meta.xmp = img.read_raw_xmp() or None
                meta.iptc = {k: v for k, v in img.read_iptc().items() if not k.startswith("Iptc.Envelope")}
            finally:
                img.close()
    except Exception:  # noqa: BLE001 - a format exiv2 does not read (or no block): nothing to carry
        pass
    return meta


def _strip_exif_header(exif: bytes) -> bytes:
    return exif[6:] if exif.startswith(b"Exif\x00\x00") else exif


def output_exif(exif: bytes, width: int, height: int, strip_gps: bool = False) -> bytes:
    """The source's EXIF for the output: Orientation 1 (it was applied to the pixels), the output's pixel
    size, no thumbnail (it shows the old pixels), GPS removed on request. TIFF-structured bytes."""
    from PIL import Image

    e = Image.Exif()
    e.load(b"Exif\x00\x00" + _strip_exif_header(exif))
    e[0x0112] = 1  # Orientation: the pixels are upright now
    sub = e.get_ifd(EXIF_IFD)
    sub[0xA002], sub[0xA003] = int(width), int(height)  # PixelXDimension, PixelYDimension
    for tag in (0x0100, 0x0101):  # ImageWidth / ImageLength of a TIFF-style EXIF
        if tag in e:
            e[tag] = int(width if tag == 0x0100 else height)
    if strip_gps:
        e.get_ifd(GPS_IFD).clear()
        e.pop(GPS_IFD, None)
    return _strip_exif_header(e.tobytes())  # Pillow writes IFD0 and its sub-IFDs, never IFD1 (the thumbnail)


@dataclass
class Provenance:
    """What made an output, for its XMP history (and C2PA manifest)."""

    generator: str
    weights_id: str
    config_hash: str
    source_path: str     # the input's path relative to INPUT
    source_sha256: str
    references: list[str] = field(default_factory=list)  # ids (sha256) of the references whose pixels were used
    software: str = "rasr"
    composed_of_captures: bool = False  # pixels taken from another real photo (reference transfer)

    def parameters(self) -> str:
        refs = ",".join(self.references) or "none"
        text = (f"generator={self.generator}; weights_id={self.weights_id}; config_hash={self.config_hash}; "
                f"references={refs}")
        if self.composed_of_captures:
            text += "; composite of two captures: the source photo and same-scene reference (aligned detail)"
        return text


def add_xmp_iptc(data: bytes, fmt: str, src: SourceMeta | None, prov: Provenance | None,
                 strip_gps: bool = False) -> bytes:
    """`data` (an encoded output) with the source's XMP merged in (unless `src` is None), IPTC-IIM for JPEG,
    and the provenance fields; GPS removed from XMP on request."""
    import pyexiv2

    with _EXIV2:
        img = pyexiv2.ImageData(data)
        try:
            if src is not None and src.xmp:
                img.modify_raw_xmp(src.xmp)
            if strip_gps:
                gps = {k: None for k in img.read_xmp() if k.startswith("Xmp.exif.GPS")}
                if gps:
                    img.modify_xmp(gps)
            if prov is not None:
                _add_provenance(img, prov)
            if src is not None and src.iptc and fmt.lower() in ("jpg", "jpeg"):
                img.modify_iptc(src.iptc)
            return img.get_bytes()
        finally:
            img.close()


def _add_provenance(img, prov: Provenance) -> None:
    history = [k for k in img.read_xmp() if k.startswith("Xmp.xmpMM.History[")]
    n = 1 + max((int(k.split("[", 1)[1].split("]", 1)[0]) for k in history), default=0)
    fields = {"Xmp.iptcExt.DigitalSourceType": source_type(prov.generator, prov.composed_of_captures),
              "Xmp.xmpMM.DerivedFrom/stRef:filePath": prov.source_path,
              "Xmp.xmpMM.DerivedFrom/stRef:documentID": f"sha256:{prov.source_sha256}"}
    if n == 1:
        fields["Xmp.xmpMM.History"] = 'type="Seq"'
    # no stEvt:when: the same input and config give the same bytes (reruns and resumed runs are byte-identical;
    # the manifest's processed_at says when)
    fields.update({f"Xmp.xmpMM.History[{n}]/stEvt:action": "derived",
                   f"Xmp.xmpMM.History[{n}]/stEvt:softwareAgent": prov.software,
                   f"Xmp.xmpMM.History[{n}]/stEvt:parameters": prov.parameters()})
    img.modify_xmp(fields)
