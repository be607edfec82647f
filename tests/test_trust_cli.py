"""Issue 15, CLIs that speak in messages: one exit-code table, no tracebacks, the same
--output/--config/key=value everywhere, Ctrl-C and SIGTERM that say "re-run to resume"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_trust_ops import build_cmd, env_for, receipt_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = {n: os.path.join(ROOT, "pipelines", "cli", f"{n}.py")
       for n in ("manifest", "export", "preview", "export_prompts")}
BUILD = os.path.join(ROOT, "pipelines", "build_groundv.py")


def cli(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, BUILD if name == "build" else CLI[name], *args]
    env = env or {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def built(ray_session, sample_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("cli") / "out")
    done = subprocess.run(build_cmd(str(sample_dir), out, "data.limit=4"), env=env_for(ray_session),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def bad_operations(out: str, tmp: Path) -> list[tuple[str, tuple[str, ...], int, str]]:
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "dir.yaml").mkdir(exist_ok=True)
    return [
        ("manifest", ("show", "99", "--output", out), 1, "no version 99"),
        ("manifest", ("diff", "1", "99", "--output", out), 1, "no version 99"),
        ("manifest", ("--output", out, "show", "1"), 0, "version 1"),
        ("manifest", ("show", "--output", out, "data.limit=3"), 0, "version 1"),  # key=value + option after
        ("manifest", ("gc", "--keep", "0", "--output", out), 2, "--keep must be >= 1"),
        ("manifest", ("show", "--output", str(tmp / "none")), 1, "no versions under"),
        ("manifest", ("show", "--output", "gs://b/x"), 2, "not supported"),
        ("manifest", ("show", "--config", str(tmp / "list.yaml")), 2, "must be a mapping"),
        ("export", ("lisa", "--out", str(tmp / "e1"), "--output", out, "--version", "9"), 1, "version 9 not found"),
        ("export", ("lisa", "--out", str(tmp / "e2"), "--config", str(tmp / "dir.yaml")), 2, "is a directory"),
        ("export", ("lisa", "--out", str(tmp / "e3"), "--output", out, "stream.image_batch_size=0"), 2, ">= 1"),
        ("preview", ("--output", out, "--out", "/missing/dir/p.html"), 2, "/missing/dir/p.html"),
        ("preview", ("--output", out, "--version", "5", "--out", str(tmp / "p.html")), 1, "no version 5"),
        ("export_prompts", ("--out", str(tmp / "p.jsonl"), "--config", str(tmp / "list.yaml")), 2, "mapping"),
        ("export_prompts", ("--out", str(tmp / "p.jsonl"), "--output", out, "teacher.max_pixels=0"), 2, "max_pixels"),
        ("build", ("--config", str(tmp / "list.yaml")), 2, "must be a mapping"),
        ("build", ("stream.image_batch_size=0",), 2, "stream.image_batch_size must be >= 1"),
        ("build", ("--output", "s3a:/bad", "data.limit=-1"), 2, "data.limit"),
    ]


@pytest.mark.ray
def test_every_cli_answers_bad_operations_with_a_message_and_the_table_exit_code(built, tmp_path):
    tracebacks = 0
    for name, args, code, text in bad_operations(built, tmp_path):
        r = cli(name, *args)
        tracebacks += "Traceback" in r.stderr
        assert "Traceback" not in r.stderr, (name, args, r.stderr[-1500:])
        assert r.returncode == code, (name, args, r.returncode, r.stderr[-800:])
        assert text in r.stderr + r.stdout, (name, args, r.stderr[-800:])
    assert tracebacks == 0


@pytest.mark.ray
def test_exporting_a_garbage_collected_version_says_so(ray_session, sample_dir, built, tmp_path):
    out = str(tmp_path / "o")
    env = env_for(ray_session)
    for extra in ("teacher.pairs_per_unit=3", "teacher.pairs_per_unit=2"):  # v2 regenerates every unit
        assert subprocess.run(build_cmd(str(sample_dir), out, "data.limit=4", extra), env=env, capture_output=True,
                              timeout=600).returncode == 0
    assert cli("manifest", "gc", "--keep", "1", "--delete", "--grace-s", "0", "--output", out).returncode == 0
    r = cli("export", "lisa", "--out", str(tmp_path / "e"), "--output", out, "--version", "1", "--images", "none")
    assert r.returncode == 1 and "no longer exists" in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]


@pytest.mark.ray
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_build_says_rerun_to_resume(ray_session, sample_dir, tmp_path, sig, code):
    out = str(tmp_path / "out")
    proc = subprocess.Popen(build_cmd(str(sample_dir), out), env=env_for(ray_session), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not receipt_files(out):
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before the signal"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "re-run the same command to resume" in err
    assert "Traceback" not in err and "*** " not in err, err[-2000:]
    rerun = subprocess.run(build_cmd(str(sample_dir), out), env=env_for(ray_session), capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
