"""Hostile and broken inputs (issue 12): every file ssmbench reads, every number it parses.

Each case asserts what a user sees: exactly one line on stderr, exit 2 (input the user can fix)
or 1 (a run that failed), no traceback and no "internal error" fallback, no file written outside
the places a command may write, and no silent change of data (a damaged file is either refused
or reads back identical). The default run samples each generator (seconds); `-m sweep` runs the
full sweeps (every byte of the leaderboard, more checkpoint mutations).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import multiprocessing
import os
import random
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model_zoo import build_model, checkpoints, zoo
from model_zoo.errors import CheckpointError, RunError, UsageError
from ssmbench import leaderboard as lb
from ssmbench.cli import main
from tests.test_leaderboard import known_rows, make_row

SWEEP = pytest.mark.sweep


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's stderr, asserted to be a single 'error: ...' line from our renderer."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in err and "internal error" not in err, err
    return err


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*")}


# -- checkpoints: a mutation generator over header, metadata and tensors ------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("s4d", "digits", d_model=8, d_state=4, n_layers=2, ads="tanh")
    path = tmp_path_factory.mktemp("ckpt") / "best.safetensors"
    checkpoints.save(model.eval(), path, checkpoints.CheckpointMeta(model.config, training={"method": "pgd"}, epoch=3, kind="best"))
    return path


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(safetensors header JSON, the tensor bytes after it)."""
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def edit_metadata(data: bytes, edit: Callable[[dict[str, Any]], None], reseal: bool = False) -> bytes:
    """Change the ssmbench metadata; with reseal, recompute its hash (a forger who read our code)."""
    header, body = split(data)
    meta = json.loads(header["__metadata__"]["ssmbench"])
    edit(meta)
    if reseal:
        meta["metadata_sha256"] = checkpoints.metadata_sha256(meta)
    header["__metadata__"]["ssmbench"] = json.dumps(meta)
    return join(header, body)


def _set(*keys: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


# Edits of a resealed file: the hash no longer helps, the cross-checks against the tensors must.
RESEALED_LIES = {
    "n_layers 1e6": _set("config", "n_layers", value=1_000_000),
    "d_model 1e6": _set("config", "d_model", value=1_000_000),
    "d_state 1e6": _set("config", "d_state", value=1_000_000),
    # Under the config limit, so only the file's own contents can refuse them:
    "n_layers 3": _set("config", "n_layers", value=3),
    "d_model 9": _set("config", "d_model", value=9),
    "d_state 60000": _set("config", "d_state", value=60_000),
    "d_state 6": _set("config", "d_state", value=6),
    "d_model string": _set("config", "d_model", value="8"),
    "n_layers float": _set("config", "n_layers", value=2.0),
    "input 3x32x32": _set("config", "channels", value=3),
    "input_shape summary": _set("input_shape", value=[3, 32, 32]),
    "classes": _set("config", "classes", value=50),
    "complex list wrong": _set("complex", value=["blocks.0.mixer.log_dt"]),
    "complex not a list": _set("complex", value="x"),
    "unknown arch": _set("config", "arch", value="../../etc"),
    "unknown config key": _set("config", "evil", value=1),
    "mixer option": _set("config", "mixer_options", value={"hidden": 10**9}),
    "ads unknown": _set("config", "ads", value="gelu"),
    "format -1": _set("format_version", value=-1),
    "format newer": _set("format_version", value=99),
    "format string": _set("format_version", value="2"),
    "training a list": _set("training", value=[1]),
    "epoch a string": _set("epoch", value="3"),
}
# Edits without resealing: any change of the metadata must trip its hash.
UNSEALED_EDITS = {
    "ads tanh -> sigmoid": _set("config", "ads", value="sigmoid"),
    "method pgd -> trades": _set("training", "method", value="trades"),
    "metrics": _set("metrics", value={"clean_acc": 1.0}),
    "kind": _set("kind", value="last"),
    "hash removed": lambda meta: meta.pop("metadata_sha256"),
    "tensor hash": _set("tensors_sha256", value="0" * 64),
}


def assert_refused_or_identical(path: Path, original: Path) -> None:
    """Loading either raises CheckpointError or gives exactly the original weights and metadata."""
    try:
        model, meta = checkpoints.load(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    reference, reference_meta = checkpoints.load(original)
    assert meta == reference_meta
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("lie", sorted(RESEALED_LIES))
def test_resealed_metadata_lies_are_refused_by_show_and_load(
    lie: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(edit_metadata(checkpoint.read_bytes(), RESEALED_LIES[lie], reseal=True))
    with pytest.raises(CheckpointError):
        checkpoints.load(path)
    assert main(["zoo", "show", str(path)]) == 2
    assert str(path) in one_line_error(capsys)


@pytest.mark.parametrize("edit", sorted(UNSEALED_EDITS))
def test_metadata_edits_trip_the_metadata_hash(edit: str, checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(edit_metadata(checkpoint.read_bytes(), UNSEALED_EDITS[edit]))
    with pytest.raises(CheckpointError, match="checksum mismatch|format_version"):
        checkpoints.load(path)


def test_the_metadata_hash_is_an_independent_sha256_of_the_sorted_json(checkpoint: Path) -> None:
    meta = json.loads(split(checkpoint.read_bytes())[0]["__metadata__"]["ssmbench"])
    body = json.dumps({k: v for k, v in meta.items() if k != "metadata_sha256"}, sort_keys=True)
    assert meta["format_version"] == 2 and meta["metadata_sha256"] == hashlib.sha256(body.encode()).hexdigest()


def test_format_1_files_still_load_as_they_are() -> None:
    """The shipped weights predate format 2: they load (their metadata is pinned by zoo.toml's sha256)."""
    entry = next(e for e in zoo.load_zoo().values() if e.file)
    path = zoo.resolve(entry.name)
    assert checkpoints.read_meta(path)[1]["format_version"] == 1
    assert checkpoints.load(path)[1].config.arch == entry.config["arch"]


def byte_flips(data: bytes, count: int, seed: int = 0) -> Iterator[tuple[int, bytes]]:
    """(position, data with that byte inverted) for `count` positions (all when count >= len)."""
    positions = range(len(data)) if count >= len(data) else random.Random(seed).sample(range(len(data)), count)
    for position in positions:
        flipped = bytearray(data)
        flipped[position] ^= 0xFF
        yield position, bytes(flipped)


def _checkpoint_flips(checkpoint: Path, tmp_path: Path, per_region: int) -> None:
    data = checkpoint.read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    regions = {"length": (0, 8), "header": (8, header_end), "tensors": (header_end, len(data))}
    path = tmp_path / "m.safetensors"
    for start, end in regions.values():
        rng = random.Random(start)
        for position in rng.sample(range(start, end), min(per_region, end - start)):
            flipped = bytearray(data)
            flipped[position] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(flipped))
            assert_refused_or_identical(path, checkpoint)


def test_checkpoint_byte_flips_are_refused_or_harmless(checkpoint: Path, tmp_path: Path) -> None:
    _checkpoint_flips(checkpoint, tmp_path, per_region=8)


@SWEEP
def test_checkpoint_byte_flips_sweep(checkpoint: Path, tmp_path: Path) -> None:
    _checkpoint_flips(checkpoint, tmp_path, per_region=400)


def test_show_of_a_million_layer_claim_builds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's 212 KB file claiming n_layers = 1,000,000 (a format-1 shipped file, edited)."""
    path = tmp_path / "big.safetensors"
    shipped = zoo.resolve(next(e.name for e in zoo.load_zoo().values() if e.file))
    path.write_bytes(edit_metadata(shipped.read_bytes(), _set("config", "n_layers", value=1_000_000)))
    assert main(["zoo", "show", str(path)]) == 2
    assert "n_layers" in one_line_error(capsys)


# -- the leaderboard: byte flips, schema versions, symlinks, unwritable places ---------------------------


@pytest.fixture
def sealed(tmp_path: Path) -> Path:
    path = tmp_path / "results.parquet"
    lb.append(path, known_rows()[:3])
    return path


def _leaderboard_flips(sealed: Path, count: int) -> tuple[int, int]:
    """Flip `count` bytes one at a time: each read must be refused or give the same rows."""
    reference, data = lb.read(sealed), sealed.read_bytes()
    refused = identical = 0
    for _, flipped in byte_flips(data, count):
        sealed.write_bytes(flipped)
        try:
            rows = lb.read(sealed)
        except lb.LeaderboardError as exc:
            assert "\n" not in str(exc) and str(sealed) in str(exc)
            refused += 1
            continue
        assert rows == reference
        identical += 1
    return refused, identical


def test_leaderboard_byte_flips_never_change_rows_silently(sealed: Path) -> None:
    refused, identical = _leaderboard_flips(sealed, 250)
    assert refused > identical  # the data pages are most of the file, and each page is checksummed


@SWEEP
def test_leaderboard_every_byte_flip(sealed: Path) -> None:
    _leaderboard_flips(sealed, 10**9)


def test_the_seal_is_a_sha256_over_the_rows_as_json(sealed: Path) -> None:
    table = pq.read_table(sealed)
    version = table.schema.metadata[b"ssmbench.schema_version"]
    digest = hashlib.sha256(version + b"\n" + json.dumps(table.column_names).encode())
    for record in table.to_pylist():
        values = [v.hex() if isinstance(v, bytes) else v for v in (record[n] for n in table.column_names)]
        digest.update(json.dumps(values).encode() + b"\n")
    assert table.schema.metadata[b"ssmbench.rows_sha256"].decode() == digest.hexdigest()


def test_a_reseal_less_edit_of_a_value_is_refused(sealed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An edit made with pyarrow itself (valid pages, old seal kept) is caught by the seal."""
    table = pq.read_table(sealed)
    table = table.set_column(table.column_names.index("attention"), "attention", pa.array([True] * table.num_rows))
    pq.write_table(table, sealed)
    with pytest.raises(lb.LeaderboardError, match="sha256 seal"):
        lb.read(sealed)
    assert main(["leaderboard", "show", "--path", str(sealed)]) == 2
    one_line_error(capsys)


def test_files_written_before_the_seal_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.parquet"
    rows = known_rows()[:2]
    pq.write_table(lb._to_table(rows), path)  # the pre-seal writer: no seal, no page checksums
    assert lb.read(path) == rows
    lb.append(path, [make_row("new")])
    assert b"ssmbench.rows_sha256" in pq.read_metadata(path).metadata


@pytest.mark.parametrize("version", [b"-1", b"99", b"x"])
def test_bad_schema_versions_are_one_line(version: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v.parquet"
    table = lb._to_table([make_row()])
    pq.write_table(table.replace_schema_metadata({b"ssmbench.schema_version": version}), path)
    assert main(["leaderboard", "show", "--path", str(path)]) == 2
    assert str(path) in one_line_error(capsys)


def test_append_refuses_an_existing_file_with_an_invalid_row(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    table = lb._to_table([make_row()])
    table = table.set_column(table.column_names.index("clean_acc"), "clean_acc", pa.array([7.0]))
    pq.write_table(table, path)
    before = path.read_bytes()
    with pytest.raises(lb.LeaderboardError, match="clean_acc"):
        lb.append(path, [make_row("new")])
    assert path.read_bytes() == before


def _append_through(path: str, run_ids: list[str]) -> None:
    for run_id in run_ids:
        lb.append(path, [make_row(run_id)])


def test_symlinked_leaderboard_with_concurrent_writers_stays_shared(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "results.parquet"
    lb.append(shared, [make_row("first")])
    os.chmod(shared, 0o640)
    link = tmp_path / "mine" / "results.parquet"
    link.parent.mkdir()
    link.symlink_to(shared)
    names = [[f"{who}-{i}" for i in range(4)] for who in ("link-a", "link-b", "direct")]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_through, args=(str(link if n[0].startswith("link") else shared), n)) for n in names]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert link.is_symlink() and os.path.realpath(link) == str(shared)
    assert sorted(row.run_id for row in lb.read(shared)) == sorted(["first", *sum(names, [])])
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640


def test_an_unwritable_leaderboard_keeps_the_rows_and_says_where(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the leaderboard's folder should be\n")  # fails for root too
    keep = tmp_path / "run"
    keep.mkdir()
    rows = [make_row("kept-1"), make_row("kept-2")]
    with pytest.raises(RunError, match="saved to") as caught:
        lb.append_or_keep(blocker / "results.parquet", rows, keep)
    kept = keep / "unrecorded-kept-1.parquet"
    assert str(kept) in str(caught.value) and lb.read(kept) == rows


def test_eval_keeps_its_rows_when_the_leaderboard_cannot_be_written(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    code = main(["eval", str(checkpoint), "--n-examples", "4", "--no-checks", "--device", "cpu",
                 "--leaderboard", str(blocker / "results.parquet")])
    assert code == 1
    err = one_line_error(capsys)
    kept = Path(err.split("saved to ")[1].split(",")[0])
    assert kept.parent == checkpoint.parent and len(lb.read(kept)) == 1
    kept.unlink()


@pytest.mark.parametrize("dataset", ["/tmp/escape", "../../escape", "a/b"])
def test_robustbench_export_never_writes_outside_out(dataset: str, tmp_path: Path) -> None:
    rows = [make_row("x", suite="autoattack", dataset=dataset)]
    before = files_under(tmp_path)
    with pytest.raises(lb.LeaderboardError, match="not a plain name"):
        lb.export(rows, "robustbench", tmp_path / "out")
    assert files_under(tmp_path) - before <= {tmp_path / "out"}
    assert not Path("/tmp/escape").exists()


# -- zoo.toml and downloads --------------------------------------------------------------------------------

SHA = "0" * 64
HOSTILE_ZOO = {
    "path name": f'[models."../../../../tmp/ssmbench-zoo-escape-probe"]\nurl = "https://example.org/x"\nsha256 = "{SHA}"\n',
    "absolute file": f'[models.a]\nfile = "/etc/passwd"\nsha256 = "{SHA}"\n',
    "file escapes": f'[models.a]\nfile = "../../x.safetensors"\nsha256 = "{SHA}"\n',
    "file url": f'[models.a]\nurl = "file:///dev/zero"\nsha256 = "{SHA}"\n',
    "unknown key": f'[models.a]\nurl = "https://example.org/x"\nsha256 = "{SHA}"\nevil = 1\n',
    "invalid toml": "[models.a\nurl = 1\n",
    "bad sha256": '[models.a]\nurl = "https://example.org/x"\nsha256 = "abc"\n',
    "neither file nor url": f'[models.a]\nsha256 = "{SHA}"\n',
    "wrong type": f'[models.a]\nurl = 5\nsha256 = "{SHA}"\n',
    "not a table": "models = 3\n",
    "other table": "[other]\nx = 1\n",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ZOO))
def test_hostile_zoo_entries_are_refused_before_any_write(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSMBENCH_CACHE", str(tmp_path / "cache"))
    zoo_file = tmp_path / "zoo" / "zoo.toml"
    zoo_file.parent.mkdir()
    zoo_file.write_text(HOSTILE_ZOO[case])
    before = files_under(tmp_path)
    with pytest.raises(UsageError, match=str(zoo_file)):
        zoo.load_zoo(zoo_file)
    with pytest.raises(UsageError):
        zoo.fetch("a", zoo_file)
    assert main(["zoo", "add", str(checkpoint), "--name", "b", "--from-leaderboard", str(tmp_path / "none.parquet"),
                 "--zoo-file", str(zoo_file)]) == 2
    one_line_error(capsys)
    assert files_under(tmp_path) == before and not Path("/tmp/ssmbench-zoo-escape-probe").exists()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(served))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler_class = http.server.SimpleHTTPRequestHandler
    handler_class.log_message = lambda *args: None  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()


def _remote_zoo(tmp_path: Path, url: str, sha256: str) -> Path:
    zoo_file = tmp_path / "zoo.toml"
    zoo_file.write_text(f'[models.remote]\nurl = "{url}"\nsha256 = "{sha256}"\n')
    return zoo_file


def test_fetch_streams_verifies_and_caps(
    server: tuple[str, Path], checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = server
    monkeypatch.setenv("SSMBENCH_CACHE", str(tmp_path / "cache"))
    payload = checkpoint.read_bytes()
    (served / "m.safetensors").write_bytes(payload)
    zoo_file = _remote_zoo(tmp_path, f"{base}/m.safetensors", hashlib.sha256(payload).hexdigest())
    with pytest.raises(RunError, match="more than (the )?1,000"):
        zoo.fetch("remote", zoo_file, max_bytes=1000)
    assert not (tmp_path / "cache" / "zoo" / "remote.safetensors").exists()
    assert [p.name for p in (tmp_path / "cache" / "zoo").iterdir()] == []  # no temp file left
    path = zoo.fetch("remote", zoo_file)
    assert path == tmp_path / "cache" / "zoo" / "remote.safetensors" and path.read_bytes() == payload
    path.unlink()
    wrong = _remote_zoo(tmp_path, f"{base}/m.safetensors", SHA)
    with pytest.raises(RunError, match="not saved"):
        zoo.fetch("remote", wrong)
    assert not path.exists()


# -- numbers and names on the command line -------------------------------------------------------------------

BAD_OPTIONS = {
    "train --lr abc": (["train", "s4d", "--lr", "abc"], "--lr"),
    "train --eps 1e400": (["train", "s4d", "--eps", "1e400"], "--eps"),
    "train --eps 1e308": (["train", "s4d", "--eps", "1e308"], "--eps"),
    "train --alpha 1/0": (["train", "s4d", "--alpha", "1/0"], "--alpha"),
    "train --lr 1e38": (["train", "s4d", "--lr", "1e38"], "lr"),
    "train --lr inf": (["train", "s4d", "--lr", "inf"], "lr"),
    "train --lr nan": (["train", "s4d", "--lr", "nan"], "lr"),
    "train --seed -1": (["train", "s4d", "--seed", "-1"], "seed"),
    "train --seed 2**32": (["train", "s4d", "--seed", str(2**32)], "seed"),
    "train --epochs 0": (["train", "s4d", "--epochs", "0"], "epochs"),
    "train --device cuda:abc": (["train", "s4d", "--device", "cuda:abc"], "--device"),
    "train --device meta": (["train", "s4d", "--device", "meta"], "--device"),
    "train --device cpu:3": (["train", "s4d", "--device", "cpu:3"], "--device"),
    "analyze --steps -1": (["analyze", "CKPT", "--steps", "-1", "--eps", "5"], "--steps"),
    "analyze --eps 5": (["analyze", "CKPT", "--eps", "5"], "--eps"),
    "eval --eps 1e400": (["eval", "CKPT", "--eps", "1e400"], "--eps"),
    "eval --seed -1": (["eval", "CKPT", "--seed", "-1"], "--seed"),
    "eval --device meta": (["eval", "CKPT", "--device", "meta"], "--device"),
    "zoo add --eps 1e400": (["zoo", "add", "CKPT", "--name", "x", "--eps", "1e400"], "--eps"),
    "study --eps 1e400": (["study", "--models", "s4d", "--at", "st", "--eps", "1e400", "--dry-run"], "--eps"),
    "study --seeds 2**32": (["study", "--models", "s4d", "--at", "st", "--seeds", f"0,{2**32}", "--dry-run"], "seeds"),
    "bad option": (["eval", "CKPT", "--bogus"], "--bogus"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_options_are_one_line_and_exit_2(
    case: str, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    args, mentioned = BAD_OPTIONS[case]
    args = [str(checkpoint) if arg == "CKPT" else arg for arg in args]
    assert main(args) == 2
    assert mentioned in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []  # refused before any run directory or leaderboard appeared


STUDY_OVERRIDES = {"string": 'd_model = "x"', "huge": "n_layers = 1000000000", "list": "mixer_options = { hidden = [1] }"}


@pytest.mark.parametrize("case", sorted(STUDY_OVERRIDES))
def test_dry_run_refuses_model_overrides_a_run_would_refuse(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "s.toml"
    study.write_text(f'[study]\nepochs = 1\n[study.model]\n{STUDY_OVERRIDES[case]}\n[[grid]]\nmodels = ["s4d"]\nmethods = ["st"]\n')
    assert main(["study", "--config", str(study), "--dry-run"]) == 2
    assert str(study) in one_line_error(capsys)


def test_cuda_without_cuda_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "s4d", "--device", "cuda"]) == 2
    assert "no CUDA device" in one_line_error(capsys)


def test_out_that_is_a_file_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    assert main(["train", "s4d", "--epochs", "1", "--out", str(out)]) == 2
    assert "is a file" in one_line_error(capsys)
    assert out.read_text() == "x"


# -- a tampered resume state -----------------------------------------------------------------------------------

TRAIN = ["train", "s4d", "--at", "st", "--epochs", "2", "--train-examples", "32", "--eval-examples", "8", "--batch-size", "32"]
STATE_EDITS = {
    "numpy_rng": _set("numpy_rng", value=[1]),
    "history": _set("history", value=[{"x": 1}]),
    "scheduler": _set("scheduler", value=5),
    "best_epoch": _set("best_epoch", value="x"),
    "complex": _set("complex", value=["nope"]),
    "format": _set("format", value=-1),
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "r"
    assert main([*TRAIN, "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.mark.parametrize("edit", sorted(STATE_EDITS))
def test_a_tampered_resume_state_is_one_line(
    edit: str, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    out.mkdir()
    header, body = split((trained_run / "state.safetensors").read_bytes())
    (key,) = header["__metadata__"]
    document = json.loads(header["__metadata__"][key])
    STATE_EDITS[edit](document)
    header["__metadata__"][key] = json.dumps(document)
    (out / "state.safetensors").write_bytes(join(header, body))
    capsys.readouterr()
    assert main([*TRAIN, "--out", str(out), "--device", "cpu", "--resume"]) == 2
    assert "state.safetensors" in one_line_error(capsys)
