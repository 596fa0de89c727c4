"""C2PA content credentials for enhanced photos (c2pa-python, the C2PA project's own SDK).

With a signing certificate chain and its private key (`--c2pa-cert` / `--c2pa-key`, or RASR_C2PA_CERT /
RASR_C2PA_KEY: PEM files), every output carries a signed C2PA manifest:

    actions      c2pa.opened (the source photo), then c2pa.edited with the IPTC digital source type of the
                 generator and rasr's parameters (generator, weights_id, config_hash, references)
    ingredients  the source photo (relationship parentOf) and each reference whose pixels were used
                 (componentOf)

Without a certificate only the XMP marking of rasr/restoration/metadata.py is written. Ingredient thumbnails are not
embedded (an archive keeps the source itself; thumbnails would add tens of kB per output).
"""

from __future__ import annotations

import io
import json
import os

from rasr.restoration.metadata import Provenance, source_type

MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp", "tif": "image/tiff",
        "tiff": "image/tiff", "avif": "image/avif", "heic": "image/heic", "heif": "image/heif", "gif": "image/gif",
        "bmp": "image/bmp", "dng": "image/x-adobe-dng"}
SIGNABLE = ("png", "jpg", "jpeg", "webp", "tif", "tiff", "avif", "heic", "heif")


class CredentialsError(ValueError):
    """The signing certificate or key cannot be used; the message names the file and the fix."""


def mime_of(name_or_format: str) -> str | None:
    return MIME.get(name_or_format.lower().rsplit(".", 1)[-1])


class Signer:
    """Signs outputs with one certificate chain + key (ES256/384/512, PS256 or Ed25519, from the key type)."""

    def __init__(self, cert: str, key: str):
        for what, path in (("certificate", cert), ("key", key)):
            if not os.path.isfile(path):
                raise CredentialsError(f"C2PA {what} {path} not found: give a PEM file (--c2pa-cert / --c2pa-key)")
        self.cert_path, self.key_path = cert, key
        self.chain, self.key = open(cert, "rb").read(), open(key, "rb").read()
        self.alg = _algorithm(self.key, key)

    def sign(self, data: bytes, fmt: str, prov: Provenance, source: bytes, source_name: str,
             references: list[tuple[str, bytes]] = ()) -> bytes:
        """`data` (an encoded output of format `fmt`) with a signed C2PA manifest embedded."""
        import c2pa

        if fmt.lower() not in SIGNABLE:
            raise CredentialsError(f"C2PA manifests cannot be embedded in {fmt} files")
        edited = {"action": "c2pa.edited", "digitalSourceType": source_type(prov.generator, prov.composed_of_captures),
                  "softwareAgent": {"name": prov.software},
                  "parameters": {"description": f"x4 super resolution by {prov.generator}",
                                 "rasr": prov.parameters()}}
        manifest = {"claim_generator_info": [{"name": "rasr", "version": prov.software.split(" ")[-1]}],
                    "title": os.path.basename(prov.source_path),
                    "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                        {"action": "c2pa.opened", "parameters": {"ingredientIds": ["source"]}}, edited]}}]}
        settings = c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        context = c2pa.Context(settings)
        builder = c2pa.Builder(manifest, context)
        try:
            builder.add_ingredient({"title": os.path.basename(source_name), "relationship": "parentOf",
                                    "label": "source"}, mime_of(source_name) or "application/octet-stream",
                                   io.BytesIO(source))
            for name, blob in references:
                builder.add_ingredient({"title": os.path.basename(name), "relationship": "componentOf"},
                                       mime_of(name) or "application/octet-stream", io.BytesIO(blob))
            signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(self.alg.encode(), self.chain, self.key, None))
            dest = io.BytesIO()
            builder.sign(signer, mime_of(fmt), io.BytesIO(data), dest)
            return dest.getvalue()
        finally:
            builder.close()


def _algorithm(key_pem: bytes, path: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CredentialsError(f"C2PA key {path} is not an unencrypted PEM private key: {e}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: "es256", 384: "es384", 521: "es512"}[key.curve.key_size]
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise CredentialsError(f"C2PA key {path}: {type(key).__name__} keys cannot sign C2PA manifests")


def read_manifest(data: bytes, fmt: str) -> dict:
    """The active C2PA manifest of a file and its validation state (C2PA's own reader)."""
    import c2pa

    reader = c2pa.Reader(mime_of(fmt), io.BytesIO(data))
    store = json.loads(reader.json())
    return {"manifest": store["manifests"][store["active_manifest"]], "state": reader.get_validation_state(),
            "status": store.get("validation_status") or []}
