"""Do enhanced photos keep their colour? Mean CIEDE2000 between input and output, per ICC profile, measured
side by side in one run for what rasr writes now and for what it wrote before (the profile dropped, the
values read as sRGB).

Each bundled real photo is converted from sRGB into the profile (LittleCMS, relative colorimetric), saved as
a JPEG with the profile embedded, enhanced by `bicubic` (the worker every run uses), and compared: input
and output each converted to Lab through their own profile (the output resized back to the input's size).

    .venv/bin/python bench/colour.py            # 8 photos x 5 profiles, ~20 s
    .venv/bin/python bench/colour.py --smoke    # 1 photo (run by the test suite)

The last line is one JSON object: {"<profile>": {"keep": dE, "srgb": dE, "dropped": dE}, ...}.
Profiles: Adobe RGB and ProPhoto (colord-data), a grey gamma and a CMYK profile (Ghostscript), Display P3
(written from its primaries by tests/icc_profiles.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROFILES = ("adobe-rgb", "prophoto", "display-p3", "gray-gamma", "cmyk")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="one photo")
    args = ap.parse_args(argv)

    from PIL import Image, ImageCms

    from rasr import catalog, samples
    from rasr.restoration.worker import EnhanceWorker
    from rasr.restoration.enhance_run import EnhanceConfig
    from tests.icc_profiles import profile
    from tests.restoration.test_derivatives import SRGB, mean_delta_e

    names = samples.photo_names()[:1 if args.smoke else 8]
    results: dict[str, dict[str, list[float]]] = {p: {"keep": [], "srgb": [], "dropped": []} for p in PROFILES}
    with tempfile.TemporaryDirectory() as tmp:
        for name in PROFILES:
            icc = profile(name)
            mode = {"gray-gamma": "L", "cmyk": "CMYK"}.get(name, "RGB")
            src = os.path.join(tmp, name, "in")
            os.makedirs(src)
            for photo in names:
                img = Image.fromarray(samples.as_rgb(samples.load_photo(photo))).resize((128, 96), Image.LANCZOS)
                enc = ImageCms.profileToProfile(img, SRGB, ImageCms.ImageCmsProfile(__import__("io").BytesIO(icc)),
                                                outputMode=mode, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
                enc.save(os.path.join(src, f"{photo}.jpg"), quality=98, icc_profile=icc)
            for policy in ("keep", "srgb"):
                worker = EnhanceWorker(EnhanceConfig(generator="bicubic", output_profile=policy), io_threads=2)
                try:
                    rows = worker.process(catalog.list_inputs(src), os.path.join(tmp, name, policy), "s0", "r0")
                finally:
                    worker.close()
                for r in rows:
                    inp, out = Image.open(r["source_uri"]), Image.open(r["output_uri"])
                    results[name][policy].append(mean_delta_e(inp, icc, out, out.info.get("icc_profile")))
                    if policy == "keep":  # before: no profile in the output, its values read as sRGB
                        before = inp.convert("RGB") if name == "cmyk" else out.convert("RGB")  # CMYK: Pillow's plain conversion
                        results[name]["dropped"].append(mean_delta_e(inp, icc, before, None))
    print(f"\nmean CIEDE2000, input vs output, {len(names)} real photos per profile (bicubic x4)")
    print(f"{'profile':12} {'keep':>7} {'srgb':>7} {'dropped (before)':>17}")
    summary = {}
    for name, by in results.items():
        summary[name] = {k: round(float(np.mean(v)), 3) for k, v in by.items()}
        print(f"{name:12} {summary[name]['keep']:7.3f} {summary[name]['srgb']:7.3f} {summary[name]['dropped']:17.3f}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
