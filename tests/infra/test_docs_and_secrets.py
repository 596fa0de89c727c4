"""The walkthrough (docs/deploy.md) covers every infra file and deployment, infra/ holds no Python and each
file says what it achieves, and no secret literal is committed in infra/ or the docs."""

from __future__ import annotations

import json
import re

from tests.infra.files import DOCS, ROOT, infra_files, load_yaml, names_a_secret


def test_docs_walk_through_every_infra_file_and_deployment():
    docs = DOCS.read_text()
    for path in infra_files():
        if path.name in (".gitignore", "Dockerfile.dockerignore"):
            continue
        rel = str(path.relative_to(ROOT))
        assert rel in docs or (path.parent.name == "kuberay" and "infra/kuberay/" in docs), f"docs miss {rel}"
    for deployment in load_yaml(ROOT / "prefect.yaml")["deployments"]:
        assert deployment["name"] in docs, deployment["name"]


def test_no_python_logic_in_infra():
    assert not [p for p in infra_files() if p.suffix == ".py"]


def test_every_infra_file_opens_with_what_it_achieves():
    for path in infra_files():
        if path.suffix == ".json":  # no comments in JSON: the template says it in its description
            assert "rasr" in json.loads(path.read_text())["variables"]["description"]
        else:
            assert path.read_text().startswith("#"), f"{path.relative_to(ROOT)} should open with a comment"


KEY_VALUE = re.compile(r"(?<![\w{$.-])([A-Za-z][A-Za-z0-9_]*)[\"']?[ \t]*[:=][ \t]*[\"']?([^\s\"',}]*)")


def is_placeholder(value: str) -> bool:
    return (not value or value.startswith(("$", "{", "[", "os.environ")) or "change-me" in value
            or value in ("...", "true", "false"))


def test_secret_scanner_catches_literals():
    text = ('password: hunter2\nMINIO_ROOT_PASSWORD=s3cr3t\n"aws_secret_access_key": "abc"\n'
            'key: ${POSTGRES_PASSWORD:?set it}\nsecretKeyRef: {name: rasr-s3}\nTOKENIZERS_PARALLELISM=false')
    hits = [m.group(1) for m in KEY_VALUE.finditer(text)
            if names_a_secret(m.group(1)) and not is_placeholder(m.group(2))]
    assert hits == ["password", "MINIO_ROOT_PASSWORD", "aws_secret_access_key"]


def test_no_secret_literals_in_infra_or_docs():
    problems = []
    for path in [*infra_files(), DOCS]:
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        if re.search(r"AKIA[0-9A-Z]{16}", text):
            problems.append(f"{where}: an AWS access key id")
        if "PRIVATE KEY-----" in text:
            problems.append(f"{where}: a private key")
        for m in re.finditer(r"://[^/\s:@]+:([^@\s/]+)@", text):
            if not m.group(1).startswith("${"):
                problems.append(f"{where}: credentials in a URL: {m.group(0)}")
        for m in KEY_VALUE.finditer(text):
            if names_a_secret(m.group(1)) and not is_placeholder(m.group(2)):
                problems.append(f"{where}: {m.group(1)} = {m.group(2)!r} looks like a literal secret")
    assert not problems, "\n".join(problems)
