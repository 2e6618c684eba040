"""rnnlab tensorboard: metrics.jsonl as TensorBoard events, read back by an independent reader.

The reader below parses the TFRecord framing itself (length, masked CRC-32C of the length, data,
masked CRC-32C of the data) with its own CRC-32C, checked against the standard test vector, and
decodes each record with tensorboardX's ``Event`` message.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboardX")

from tensorboardX.proto.event_pb2 import Event  # noqa: E402

from rnnlab.cli import main  # noqa: E402
from rnnlab.tensorboard import export_metrics, tag_of  # noqa: E402

# -- an independent reader ------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):  # reflected Castagnoli polynomial 0x1EDC6F41
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: Path) -> list[Event]:
    raw, pos, events = path.read_bytes(), 0, []
    while pos < len(raw):
        assert len(raw) - pos >= 12, "a truncated record header"
        header = raw[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", raw[pos + 8 : pos + 12])
        assert header_crc == masked(header)
        assert len(raw) - pos - 12 >= length + 4, "a record longer than the file"
        data = raw[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack("<I", raw[pos + 12 + length : pos + 16 + length])
        assert data_crc == masked(data)
        events.append(Event.FromString(data))
        pos += 16 + length
    assert pos == len(raw)
    return events


def event_file(out: Path) -> Path:
    files = sorted(out.iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents."), files
    return files[0]


def scalars(event: Event) -> dict[str, float]:
    return {v.tag: v.simple_value for v in event.summary.value}


def f32(x: float) -> float:
    return float(np.float32(x))


def test_crc32c_reference():  # the check value of CRC-32C (RFC 3720, iSCSI)
    assert crc32c(b"123456789") == 0xE3069283


# -- the export -----------------------------------------------------------------------------------

RECORDS = [
    {"step": 1, "train_loss": 4.17, "lr": 0.002, "grad_norm": 3.5, "epoch": 0,
     "nonfinite_skips": 0, "elapsed_s": 0.125, "chars_per_s": 51200.0},
    {"step": 2, "train_loss": 3.9, "lr": 0.002, "grad_norm": 2.25, "epoch": 0,
     "nonfinite_skips": 0, "elapsed_s": 0.25, "chars_per_s": 52000.5},
    {"step": 3, "train_loss": 3.5, "lr": 0.001, "grad_norm": 1.5, "epoch": 1,
     "nonfinite_skips": 1, "elapsed_s": 2.5, "chars_per_s": 49000.0,
     "val_loss": 3.25, "val_bpc": 4.6888, "val_wer": 0.5, "val_accuracy": 0.75,
     "val_macro_f1": 0.625, "val_bleu4": 0.125, "val_cider": 0.0625, "val_per": 0.3},
    {"step": 4, "train_loss": 3.0, "lr": 0.001, "grad_norm": 9.0, "epoch": 1,
     "nonfinite_skips": 1, "elapsed_s": 3.0, "tokens_per_s": 100.0, "verdict": "diverged"},
]  # fmt: skip
TORN = '{"step": 5, "train_loss": 2.9, "lr": 0.0'  # a kill mid-write: no newline, not JSON


def write_run(tmp_path: Path, records=RECORDS, torn: str = TORN) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in records) + torn  # as MetricsLog writes them
    (run / "metrics.jsonl").write_text(text)
    return run


def expected(record: dict) -> dict[str, float]:
    return {
        tag_of(k): f32(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def assert_round_trip(out: Path, records: list[dict], start: float) -> None:
    events = read_events(event_file(out))
    assert events[0].file_version == "brain.Event:2"
    body = events[1:]
    assert [e.step for e in body] == [r["step"] for r in records]
    for event, record in zip(body, records, strict=True):
        assert event.wall_time == start + record["elapsed_s"]
        got, want = scalars(event), expected(record)
        assert got.keys() == want.keys()
        for tag, value in want.items():
            assert got[tag] == value or (math.isnan(got[tag]) and math.isnan(value)), tag


def test_every_step_and_value_comes_back(tmp_path):
    run = write_run(tmp_path)
    with pytest.warns(UserWarning, match="torn last line"):
        out = export_metrics(run, start=1_700_000_000.0)
    assert out == run / "tensorboard"
    assert_round_trip(out, RECORDS, 1_700_000_000.0)
    tags = set(scalars(read_events(event_file(out))[3]))
    assert {"train/loss", "train/lr", "train/grad_norm", "train/epoch", "train/nonfinite_skips",
            "speed/elapsed_s", "speed/chars_per_s", "val/loss", "val/bpc", "val/wer", "val/per",
            "val/accuracy", "val/macro_f1", "val/bleu4", "val/cider"} == tags  # fmt: skip
    assert "speed/tokens_per_s" in scalars(read_events(event_file(out))[4])  # verdict left out


def test_nan_losses_come_back(tmp_path):
    records = [
        {**RECORDS[0], "train_loss": math.nan, "grad_norm": math.inf},
        {**RECORDS[1], "train_loss": math.nan, "grad_norm": math.nan, "nonfinite_skips": 2},
        RECORDS[2],
    ]
    run = write_run(tmp_path, records, torn="")
    assert_round_trip(export_metrics(run, start=0.0), records, 0.0)


def test_nan_values_are_written_as_nan(tmp_path, monkeypatch):
    """The export's side of the test above, with a reader that accepts NaN as json does."""
    from rnnlab.training import tools

    def read(path, *, damaged="drop"):
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line]

    monkeypatch.setattr(tools, "read_metrics", read)
    records = [{**RECORDS[0], "train_loss": math.nan, "grad_norm": math.inf}, RECORDS[2]]
    run = write_run(tmp_path, records, torn="")
    assert_round_trip(export_metrics(run, start=0.0), records, 0.0)


def test_converting_again_replaces_the_export(tmp_path):
    run = write_run(tmp_path, torn="")
    export_metrics(run, start=1000.0)
    first = event_file(run / "tensorboard")
    with (run / "metrics.jsonl").open("a") as f:  # the run went on
        f.write(json.dumps({**RECORDS[1], "step": 9, "elapsed_s": 9.5}) + "\n")
    export_metrics(run, start=2000.0)
    second = event_file(run / "tensorboard")  # exactly one file: the old one is gone
    assert second.name != first.name
    assert [e.step for e in read_events(second)[1:]] == [1, 2, 3, 4, 9]
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "tensorboard"]


def test_default_wall_time_is_the_log_time_minus_elapsed(tmp_path):
    run = write_run(tmp_path, torn="")
    mtime = (run / "metrics.jsonl").stat().st_mtime
    events = read_events(event_file(export_metrics(run)))
    assert events[-1].wall_time == pytest.approx(mtime)  # the last record: when it was logged
    assert events[2].wall_time - events[1].wall_time == pytest.approx(0.125)


def test_cli_writes_the_default_export(tmp_path, capsys):
    run = write_run(tmp_path)
    assert main(["tensorboard", str(run)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(run / "tensorboard")
    assert "torn last line" in captured.err  # a note, not a failure
    assert len(read_events(event_file(run / "tensorboard"))) == 1 + len(RECORDS)


def test_cli_out(tmp_path, capsys):
    run = write_run(tmp_path, torn="")
    out = tmp_path / "views" / "tb"
    assert main(["tensorboard", str(run), "--out", str(out)]) == 0
    assert len(read_events(event_file(out))) == 1 + len(RECORDS)
    assert not (run / "tensorboard").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["tb"]


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rnnlab: error: "), err
    return err


def test_missing_run_dir_or_log_is_one_line(tmp_path, capsys):
    assert "no such run directory" in one_line_error(capsys, ["tensorboard", str(tmp_path / "x")])
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, ["tensorboard", str(tmp_path / "empty")])
    assert "metrics.jsonl: no such file" in err
    assert not (tmp_path / "empty" / "tensorboard").exists()


def test_damaged_line_names_file_and_line(tmp_path, capsys):
    run = write_run(tmp_path, torn="")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = "{not json\n"
    (run / "metrics.jsonl").write_text("".join(lines))
    err = one_line_error(capsys, ["tensorboard", str(run)])
    assert "metrics.jsonl: line 2" in err
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_symlinked_export_is_refused_and_the_target_untouched(tmp_path, capsys):
    run = write_run(tmp_path, torn="")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "events.out.tfevents.1.keep").write_bytes(b"precious")
    (run / "tensorboard").symlink_to(outside)
    err = one_line_error(capsys, ["tensorboard", str(run)])
    assert "symbolic link" in err
    assert (run / "tensorboard").is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["events.out.tfevents.1.keep"]
    assert (outside / "events.out.tfevents.1.keep").read_bytes() == b"precious"
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "tensorboard"]  # no temp


def test_a_directory_that_is_not_an_export_is_not_replaced(tmp_path, capsys):
    run = write_run(tmp_path, torn="")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    err = one_line_error(capsys, ["tensorboard", str(run), "--out", str(mine)])
    assert "not an export" in err
    assert (mine / "notes.txt").read_text() == "keep"
    one_line_error(capsys, ["tensorboard", str(run), "--out", str(run)])  # would hold the log
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_without_tensorboardx_says_how_to_install(tmp_path, capsys, monkeypatch):
    run = write_run(tmp_path, torn="")
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX: ImportError
    err = one_line_error(capsys, ["tensorboard", str(run)])
    assert "pip install 'rnnlab[tensorboard]'" in err
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_tags():
    assert [tag_of(k) for k in ("train_loss", "lr", "val_bleu4", "rows_per_s", "elapsed_s")] == [
        "train/loss", "train/lr", "val/bleu4", "speed/rows_per_s", "speed/elapsed_s",
    ]  # fmt: skip
