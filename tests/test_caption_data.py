"""Caption data: the Karpathy JSON reader and its errors, vocabulary, length caps, images,
feature files, and the deterministic synthetic shapes set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rnnlab.data.captions import (
    END,
    PAD,
    SPECIALS,
    START,
    UNK,
    CaptionVocab,
    encode_captions,
    load_image,
    load_images,
    most_frequent_caption,
    read_caption_json,
    read_features,
    tokenize,
)
from rnnlab.data.errors import DataError
from rnnlab.data.shapes import COLOURS, KINDS, write_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(out, 40, num_val=5, num_test=5, image_size=32, seed=3)


def write_json(tmp_path, data, name="captions.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def entry(filename="a.png", split="train", tokens=("a", "red", "circle")):
    return {"filename": filename, "split": split, "sentences": [{"tokens": list(tokens)}]}


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A red Circle, above a BLUE square.") == [
        "a", "red", "circle", "above", "a", "blue", "square"
    ]  # fmt: skip
    assert tokenize("the dog's ball!") == ["the", "dog's", "ball"]


def test_shapes_set_reads_back_with_splits_and_five_references(shapes):
    data = read_caption_json(shapes)
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [30, 5, 5]
    assert all(len(im.captions) == 5 for im in data.images)
    assert all(im.path.exists() for im in data.images)
    pixels = load_images(data.images[:3], 32)
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == np.uint8


def test_shapes_captions_name_the_colours_drawn(shapes):
    data = read_caption_json(shapes)
    for im in data.images[:10]:
        pixels = load_image(im.path, 32).reshape(3, -1).T.astype(int)  # (S*S, 3)
        words = {w for c in im.captions for w in c}
        named = [c for c in COLOURS if c in words]
        assert named and set(words) & set(KINDS)
        for colour in named:  # every colour a caption names is in the image's pixels
            distance = np.abs(pixels - np.array(COLOURS[colour])).sum(1)
            assert distance.min() < 30, (im.filename, colour)
        for colour in set(COLOURS) - set(named):  # and no other shape colour is
            assert np.abs(pixels - np.array(COLOURS[colour])).sum(1).min() > 30


def test_shapes_generator_is_deterministic(tmp_path):
    a = write_shapes_dataset(tmp_path / "a", 12, num_val=2, num_test=2, image_size=24, seed=7)
    b = write_shapes_dataset(tmp_path / "b", 12, num_val=2, num_test=2, image_size=24, seed=7)
    c = write_shapes_dataset(tmp_path / "c", 12, num_val=2, num_test=2, image_size=24, seed=8)
    assert a.read_text() == b.read_text() != c.read_text()
    for name in ("00000.png", "00011.png"):
        assert np.array_equal(load_image(a.parent / "images" / name, 24),
                              load_image(b.parent / "images" / name, 24))  # fmt: skip


def test_vocab_threshold_specials_and_round_trip():
    captions = [("a", "red", "circle"), ("a", "red", "square"), ("a", "blue", "zigzag")]
    vocab = CaptionVocab.build(captions, min_count=2)
    assert vocab.words == (*SPECIALS, "a", "red")
    assert vocab.encode(["a", "blue", "red"]) == [4, UNK, 5]
    assert vocab.decode([START, 4, 5, END, 4]) == ["a", "red"]
    assert CaptionVocab.from_json(json.loads(json.dumps(vocab.to_json()))) == vocab
    with pytest.raises(DataError, match="vocab.json"):
        CaptionVocab.from_json({"kind": "words", "words": ["a", "b"]}, "vocab.json")


def test_length_cap_truncates_and_counts(tmp_path):
    data = read_caption_json(write_json(tmp_path, {"images": [
        entry(tokens=["w"] * 5), entry("b.png", tokens=["w", "w"])]}))  # fmt: skip
    vocab = CaptionVocab.build([c for im in data.images for c in im.captions])
    enc = encode_captions(data.images, vocab, max_length=3)
    assert enc.truncated == 1
    assert enc.ids.tolist() == [[START, 4, 4, 4, END], [START, 4, 4, END, PAD]]
    assert enc.image_rows.tolist() == [0, 1]


def test_raw_sentences_are_tokenised(tmp_path):
    path = write_json(tmp_path, {"images": [{"filename": "x.jpg", "split": "restval",
                      "sentences": [{"raw": "A Red circle."}]}]})  # fmt: skip
    data = read_caption_json(path)
    assert data.images[0].captions == (("a", "red", "circle"),)
    assert data.split("train") == list(data.images)  # restval counts as train
    assert most_frequent_caption(data.images) == ("a", "red", "circle")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"images": [', r"not valid JSON \(line 1"),
        ({"annotations": []}, 'an "images" list'),
        ({"images": []}, "images list is empty"),
        ({"images": [5]}, r"images\[0\]: expected an object, found int"),
        ({"images": [entry(split="dev")]}, r"images\[0\]\.split: expected one of"),
        ({"images": [{"filename": "a.png", "split": "val"}]}, r"images\[0\]\.sentences"),
        (
            {"images": [{**entry(), "sentences": [{"tokens": "a red"}]}]},
            r"sentences\[0\]\.tokens: expected a list of strings, found str",
        ),
        ({"images": [entry(tokens=[])]}, r"sentences\[0\]: the caption has no words"),
        ({"images": [entry("../../etc/passwd")]}, "must be a path inside the image folder"),
        ({"images": [entry("/abs.png")]}, "must be a path inside the image folder"),
        ({"images": [entry(), entry()]}, r"images\[1\]\.filename: .* is also images\[0\]"),
        ({"images": [{**entry(), "filename": None}]}, r"images\[0\]\.filename"),
    ],
)
def test_malformed_caption_json_names_file_and_place(tmp_path, data, message):
    path = write_json(tmp_path, data)
    with pytest.raises(DataError, match=message) as info:
        read_caption_json(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_caption_file(tmp_path):
    with pytest.raises(DataError, match="no such caption file"):
        read_caption_json(tmp_path / "nope.json")


def test_missing_and_unreadable_images_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "dir.png").mkdir()
    data = read_caption_json(write_json(tmp_path, {"images": [
        entry("bad.png"), entry("gone1.png"), entry("gone2.png")]}))  # fmt: skip
    with pytest.raises(DataError, match=r"gone1\.png: no such image file \(and 1 more missing\)"):
        load_images(data.images, 16)
    with pytest.raises(DataError, match=r"bad\.png: cannot read the image"):
        load_images(data.images[:1], 16)
    with pytest.raises(DataError, match=r"dir\.png: is a directory"):
        load_image(tmp_path / "dir.png", 16)


def test_jpeg_and_grey_images_become_rgb(tmp_path):
    from PIL import Image

    Image.new("L", (20, 10), 200).save(tmp_path / "g.jpg")
    pixels = load_image(tmp_path / "g.jpg", 16)
    assert pixels.shape == (3, 16, 16) and abs(int(pixels.mean()) - 200) <= 2


def test_feature_files(tmp_path):
    from safetensors.numpy import save_file

    vectors = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    np.save(tmp_path / "f.npy", vectors)
    assert np.array_equal(read_features(tmp_path / "f.npy", 4), vectors)
    save_file({"features": vectors.reshape(4, 2, 3)}, str(tmp_path / "f.safetensors"))
    assert read_features(tmp_path / "f.safetensors", 4).shape == (4, 2, 3)
    with pytest.raises(DataError, match=r"f\.npy: expected 5 rows"):
        read_features(tmp_path / "f.npy", 5)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"obj\.npy: cannot read the features"):
        read_features(tmp_path / "obj.npy")
    np.save(tmp_path / "nan.npy", np.full((2, 3), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match="NaN"):
        read_features(tmp_path / "nan.npy")
    with pytest.raises(DataError, match="expected a .npy or .safetensors"):
        read_features(tmp_path / "f.txt")
    with pytest.raises(DataError, match="no such feature file"):
        read_features(tmp_path / "none.npy")


@pytest.mark.parametrize(
    ("shape", "empty"),
    [((4, 0), "F=0"), ((0, 6), "N=0"), ((4, 0, 6), "K=0"), ((4, 3, 0), "F=0")],
)
def test_empty_feature_dimensions_are_refused_naming_file_and_shape(tmp_path, shape, empty):
    from safetensors.numpy import save_file

    np.save(tmp_path / "f.npy", np.zeros(shape, dtype=np.float32))
    save_file({"features": np.zeros(shape, dtype=np.float32)}, str(tmp_path / "f.safetensors"))
    for name in ("f.npy", "f.safetensors"):
        with pytest.raises(DataError) as info:
            read_features(tmp_path / name, shape[0])
        message = str(info.value)
        assert str(tmp_path / name) in message and str(shape) in message and empty in message


def test_features_are_checked_in_full(tmp_path):
    np.save(tmp_path / "wide.npy", np.full((2, 3), 1e39, dtype=np.float64))
    with pytest.raises(DataError, match=r"wide\.npy: a feature value is beyond float32"):
        read_features(tmp_path / "wide.npy")
    np.save(tmp_path / "int.npy", np.ones((2, 3), dtype=np.int64))
    with pytest.raises(DataError, match=r"int\.npy: expected float features .* int64 \(2, 3\)"):
        read_features(tmp_path / "int.npy")
    np.save(tmp_path / "ok.npy", np.ones((2, 3), dtype=np.float16))
    assert read_features(tmp_path / "ok.npy", 2, width=3).dtype == np.float32
    with pytest.raises(DataError, match=r"ok\.npy: expected features of width F=5, found 3"):
        read_features(tmp_path / "ok.npy", 2, width=5)
    np.save(tmp_path / "inf.npy", np.array([[1.0, np.inf]], dtype=np.float32))
    with pytest.raises(DataError, match=r"inf\.npy: the features hold NaN or inf"):
        read_features(tmp_path / "inf.npy")


def test_a_zero_width_feature_file_stops_training_before_the_run_directory(tmp_path, capsys):
    from rnnlab.cli import main

    entries = [entry(f"{i}.png", split) for i, split in enumerate(["train", "val"])]
    data = write_json(tmp_path, {"images": entries})
    np.save(tmp_path / "f.npy", np.zeros((2, 0), dtype=np.float32))
    run = tmp_path / "run"
    argv = ["caption", "train", "--data", str(data), "--features", str(tmp_path / "f.npy")]
    assert main(argv + ["--out-dir", str(run), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "f.npy" in err and "(2, 0)" in err and "F=0" in err and err.count("\n") == 1
    assert not run.exists()


@pytest.mark.parametrize(
    "text,fragment",
    [('{"images": [], "images": []}', "images: expected each key once"),
     ('{"images": [{"imgid": ' + "9" * 5000 + "}]}", "imgid: expected an integer of at most"),
     ('{"images": [{"imgid": NaN}]}', "imgid: expected a finite number"),
     ("[" * 50_000 + "]" * 50_000, "not valid JSON")],
    ids=["duplicate-key", "5000-digits", "nan", "deep"],
)  # fmt: skip
def test_a_hostile_caption_json_is_one_line_naming_the_file(tmp_path, text, fragment):
    """The caption set is read by the one strict JSON reader, as a run directory's files are."""
    from rnnlab.data.captions import read_caption_json
    from rnnlab.data.errors import DataError

    path = tmp_path / "captions.json"
    path.write_text(text)
    with pytest.raises(DataError, match=fragment) as caught:
        read_caption_json(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
