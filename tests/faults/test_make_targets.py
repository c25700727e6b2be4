"""``make serve`` and ``make ui`` bind loopback by default; ``make predict`` on bad CSVs
gives one clear error and writes no output file (slow: trains a small model first)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.faults.helpers import ROOT, train_on_synthetic_log

# Variables a shell or platform may export that the Makefile reads with ``?=``.
_MAKE_VARS = ("HOST", "PORT", "UI_PORT", "MODEL", "TRACKING_URI", "ARGS", "MAKEFLAGS")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _MAKE_VARS}
    return {**env, **extra}


def _dry_run(target: str, env: dict[str, str] | None = None, *args: str) -> list[str]:
    out = subprocess.run(["make", "-n", "--no-print-directory", target, *args], cwd=ROOT,
                         env=env or _clean_env(), capture_output=True, text=True, check=True)
    text = out.stdout.replace("\\\n", " ")  # recipe lines continued with a backslash
    lines = [line for line in text.splitlines()
             if "/mlflow " in line and not line.lstrip().startswith("#")]
    assert len(lines) == 1, out.stdout
    argv = shlex.split(lines[0])
    while "=" in argv[0] and not argv[0].startswith("/"):  # VAR=value prefixes
        argv.pop(0)
    return argv


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_make_serve_binds_loopback_by_default():
    argv = _dry_run("serve")
    assert argv[1:3] == ["models", "serve"]
    assert _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "--port") == "5001"
    assert _flag(argv, "-m") == "models:/clv@champion"
    assert _flag(argv, "--env-manager") == "local"


def test_make_ui_binds_loopback_by_default_on_the_project_store():
    argv = _dry_run("ui")
    assert argv[1] == "ui"
    assert _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "--port") == "5000"
    assert _flag(argv, "--backend-store-uri") == f"sqlite:///{ROOT}/mlruns/mlflow.db"


def test_port_on_the_command_line_keeps_loopback():
    argv = _dry_run("serve", None, "PORT=6123")
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == "6123"


def test_an_exported_host_variable_does_not_change_the_bind_address():
    # tcsh and some containers export HOST as the machine name; the bind address is
    # BIND_HOST, which nothing exports by accident.
    for target in ("serve", "ui"):
        argv = _dry_run(target, _clean_env(HOST="0.0.0.0"))
        assert _flag(argv, "--host") == "127.0.0.1", target


# -- make predict on bad input -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict")
    _, path = train_on_synthetic_log(folder, seed=5)
    return folder / "mlruns", path


BAD_CSV = {
    "missing amount column": ("customer_id,timestamp\na,2021-01-01\nb,2021-01-02\n",
                              ["amount"]),
    "unparsable dates": ("customer_id,timestamp,amount\na,yesterday,1\nb,2021-13-45,2\n",
                         ["timestamp"]),
    "text amounts": ("customer_id,timestamp,amount\na,2021-01-01,ten\nb,2021-01-02,2\n",
                     ["amount"]),
    "empty file": ("", ["has no data rows"]),
    "header only": ("customer_id,timestamp,amount\n", ["has no data rows"]),
    "semicolons": ("customer_id;timestamp;amount\na;2021-01-01;1\nb;2021-01-02;2\n",
                   ["customer_id"]),
    "binary garbage": (b"\x00\xff\xfe\x89PNG\r\n\x1a\n" * 50, ["cannot be read as csv text"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_make_predict_bad_csv_clear_error_and_no_output(trained_store, tmp_path, case):
    store, _ = trained_store
    content, words = BAD_CSV[case]
    source = tmp_path / "bad.csv"
    if isinstance(content, bytes):
        source.write_bytes(content)
    else:
        source.write_text(content)
    output = tmp_path / "out" / "scores.csv"
    output.parent.mkdir()
    done = subprocess.run(
        ["make", "--no-print-directory", "predict", f"INPUT={source}", f"OUTPUT={output}",
         f"TRACKING_URI=sqlite:///{store}/mlflow.db",
         f"ARGS=paths.mlruns={store} hydra.run.dir={tmp_path}/hydra"],
        cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=300,
    )
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-2000:]
    assert not output.exists()
    assert list(output.parent.iterdir()) == [], "a temporary output file was left behind"
    tail = "\n".join(text.strip().splitlines()[-40:])
    assert any(w.lower() in tail.lower() for w in words), (case, tail)
    assert "DataContractError" in tail, (case, tail)


@pytest.mark.slow
def test_make_predict_good_csv_writes_one_row_per_customer(trained_store, tmp_path):
    import pandas as pd

    store, path = trained_store
    output = tmp_path / "scores.csv"
    done = subprocess.run(
        ["make", "--no-print-directory", "predict", f"INPUT={path}", f"OUTPUT={output}",
         f"TRACKING_URI=sqlite:///{store}/mlflow.db",
         f"ARGS=paths.mlruns={store} hydra.run.dir={tmp_path}/hydra"],
        cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    scores = pd.read_csv(output, dtype={"customer_id": str})
    tx = pd.read_csv(path, dtype={"customer_id": str})
    assert sorted(scores["customer_id"]) == sorted(tx["customer_id"].unique())
    assert Path(output).stat().st_size > 0
