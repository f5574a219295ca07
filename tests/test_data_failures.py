"""data: shards that cannot be read. Permanent answers (403, missing bucket, key or file) end the
stream at once with the URL and the reason; other failures are skipped and counted, and more
than ``max_failed_shards`` in a row raise; DataLoader workers hand both to the caller; the
loader's ``timeout`` ends a stalled read. Against the real S3 server of tests/support/s3server.py.

The train stream reads each sample by the span ``_index.json`` gives it, so its shards break
after they were indexed: the index here is that of good shards, the files it points to are
broken, missing or unreachable.

Each loader runs in a forked child with a hard deadline, so a regression to the old silent
stall fails the test instead of hanging the suite. The last part runs the stages themselves
(``artclf train``, ``artclf evaluate``) over a copy of the ``shards`` fixture on S3 with one
shard broken, in processes whose whole tree is killed at a deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from artclf import storage
from artclf.data import eval_loader, index_shards
from artclf.train.order import Order
from artclf.train.stream import train_loader
from artclf.transforms import Preprocess
from tests.conftest import history, train_cmd
from tests.support import procs
from tests.support.s3server import s3_outage, weed  # noqa: F401  (fixtures: a server to stop and restart)

PRE = Preprocess(image_size=16, resize=16)
DEADLINE_S = 30.0  # far above what a fatal error takes (a few seconds here)
SAMPLES = 8  # per good shard


@dataclass
class Outcome:
    """What iterating a loader gave: batches and failed keys, or the exception (by name and text)."""

    batches: int = 0
    failed: list[str] = field(default_factory=list)
    error: list[str] | None = None  # names of the exception's type and its bases
    message: str = ""
    seconds: float = 0.0


def _iterate(make_loader: Callable, conn) -> None:
    os.setpgrp()  # a group of its own, so its DataLoader workers go down with it
    out, t0 = Outcome(), time.monotonic()
    try:
        for batch in make_loader():
            out.batches += 1
            out.failed += batch.failed
    except BaseException as e:
        out.error, out.message = [c.__name__ for c in type(e).__mro__], str(e)
    out.seconds = time.monotonic() - t0
    conn.send(out)


def drain(make_loader: Callable, deadline: float = DEADLINE_S) -> Outcome:
    """Iterate ``make_loader()`` in a forked child; no answer within ``deadline`` fails the test."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_iterate, args=(make_loader, child))
    proc.start()
    try:
        if not parent.poll(deadline):
            pytest.fail(f"the loader neither ended nor raised within {deadline:.0f} s (a silent stall)")
        return parent.recv()
    finally:
        # The child's own group: a worker spinning in a stalled stream never checks its parent.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.join()


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write_shard(path: Path, n: int) -> Path:
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            sink.write({"__key__": f"{path.stem}_{i:03d}", "jpg": jpeg(i), "cls": str(i % 3)})
    return path


@pytest.fixture
def local(tmp_path) -> dict[str, Path]:
    """Two good shards, an empty one (an upload that never got its bytes) and one of random bytes
    as long as a good one (a shard overwritten after it was indexed)."""
    good = [write_shard(tmp_path / f"train-{i:06d}.tar", SAMPLES) for i in range(2)]
    empty, garbage = tmp_path / "train-000002.tar", tmp_path / "train-000003.tar"
    empty.write_bytes(b"")
    garbage.write_bytes(os.urandom(good[0].stat().st_size))
    return {"good0": good[0], "good1": good[1], "empty": empty, "garbage": garbage}


def garbage_shards(local: dict[str, Path], n: int) -> list[str]:
    """``n`` shards of random bytes, each as long as a good one."""
    out = []
    for i in range(n):
        path = local["garbage"].with_name(f"train-{100 + i:06d}.tar")
        path.write_bytes(os.urandom(local["good0"].stat().st_size))
        out.append(str(path))
    return out


def info_of(urls: list[str], num_samples: int = 2 * SAMPLES) -> dict:
    """The part of ``read_info``'s answer the loaders use; one list for train and val."""
    split = {"urls": [str(u) for u in urls], "num_samples": num_samples}
    return {"splits": {"train": split, "val": split}}


def train(urls: list, layout: Path, workers: int = 0, batch: int = 4, **kw) -> Callable:
    """One epoch of the train stream over ``urls``, indexed as if each were a copy of the good
    shard ``layout`` (the index of a set whose shards broke, went missing or out of reach later)."""
    good = index_shards([str(layout)] * len(urls))
    index = dataclasses.replace(good, urls=[str(u) for u in urls])
    order = Order(len(index), batch, seed=0)
    return lambda: train_loader(index, order, 0, 0, PRE, workers, **kw)


def evaluate(info: dict, workers: int = 0, **kw) -> Callable:
    return lambda: eval_loader(info, "val", PRE, 4, workers, 0, 1, **kw)


@pytest.fixture
def s3_urls(s3_prefix, local) -> list[str]:
    """The two good shards uploaded to a fresh S3 prefix."""
    urls = [storage.join(s3_prefix, local[k].name) for k in ("good0", "good1")]
    for k, url in zip(("good0", "good1"), urls, strict=True):
        storage.upload_file(local[k], url)
    storage.register_webdataset_s3()
    return urls


def assert_fatal(out: Outcome, url_part: str, reason: str, secrets: tuple[str, ...] = ()) -> None:
    assert out.error is not None, f"no error: {out.batches} batches, failed {out.failed[:3]}"
    assert "PermanentStorageError" in out.error and "ArtclfError" in out.error, out.error
    assert url_part in out.message and reason in out.message, out.message
    assert out.seconds < 20, out.seconds  # at once, not after resampling for a while
    for secret in secrets:
        assert secret not in out.message


@pytest.mark.parametrize("workers", [0, 1])
def test_wrong_credentials_are_fatal_at_once(s3_env, s3_urls, local, monkeypatch, workers):
    # Credentials that expire mid-run: the shard list was read, every GET now answers 403.
    wrong = "WrOnGsEcReT" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    secrets = (wrong, s3_env.secret_key)
    info = info_of(s3_urls)
    out = drain(train(s3_urls, local["good0"], workers))
    assert_fatal(out, s3_urls[0].rsplit("/", 1)[0], "access denied", secrets)
    assert_fatal(drain(evaluate(info, workers)), s3_urls[0], "access denied", secrets)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("missing", ["bucket", "key"])
def test_missing_bucket_or_keys_are_fatal_at_once(s3_env, s3_urls, local, missing, workers):
    if missing == "bucket":
        urls = [u.replace(f"s3://{s3_env.bucket}/", "s3://artclf-no-such-bucket/") for u in s3_urls]
        reason = "bucket does not exist (NoSuchBucket)"
    else:
        urls = [u.replace(".tar", "-gone.tar") for u in s3_urls]
        reason = "not found"
    out = drain(train(urls, local["good0"], workers))
    assert_fatal(out, urls[0].rsplit("/", 1)[0], reason)
    assert_fatal(drain(evaluate(info_of(urls), workers)), urls[0], reason)


@pytest.mark.parametrize("workers", [0, 1])
def test_missing_local_shard_is_fatal(local, tmp_path, workers):
    urls = [local["good0"], tmp_path / "train-000009.tar"]
    out = drain(train(urls, local["good0"], workers))
    assert_fatal(out, str(urls[1]), "not found")
    assert_fatal(drain(evaluate(info_of(urls), workers)), str(urls[1]), "not found")


@pytest.mark.parametrize("workers", [0, 1])
def test_too_many_failed_shards_in_a_row_raise(local, workers):
    bad = garbage_shards(local, 5)
    out = drain(train(bad, local["good0"], workers, batch=8, max_failed_shards=3))
    assert out.error is not None and "ArtclfError" in out.error, out
    assert "PermanentStorageError" not in out.error
    assert "failed shards in a row: 4, more than max_failed_shards=3" in out.message, out.message
    assert any(u in out.message for u in bad) and "ReadError" in out.message, out.message


def test_default_max_failed_shards_is_ten(local):
    out = drain(train(garbage_shards(local, 16), local["good0"], batch=64))
    assert out.error is not None and "failed shards in a row: 11," in out.message, out.message


def test_a_batch_whose_samples_all_fail_raises(local):
    """Every rank must take each step: a batch with nothing to train on ends the run, naming a
    cause (fewer failing shards than max_failed_shards here)."""
    out = drain(train(garbage_shards(local, 2), local["good0"], batch=4))
    assert out.error is not None and "ArtclfError" in out.error, out
    assert "no sample of a train batch of 4 could be used" in out.message and "ReadError" in out.message


@pytest.mark.parametrize("workers", [0, 1])
def test_fewer_failed_shards_are_skipped_and_counted(local, workers):
    # One shard in three broken: its samples are left out of their batches, the epoch goes on
    urls = [str(local[k]) for k in ("good0", "garbage", "good1")]
    out = drain(train(urls, local["good0"], workers, max_failed_shards=10))
    assert out.error is None, out.message
    assert out.batches == 3 * SAMPLES // 4
    assert len(out.failed) == SAMPLES  # each of its samples, once
    assert all(f.startswith(f"{urls[1]}: ReadError: ") for f in out.failed)  # its URL and cause
    # eval reads each shard once: failures are skipped and counted, whatever their number
    out = drain(evaluate(info_of([str(local[k]) for k in ("good0", "empty", "garbage", "good1")]), workers))
    assert out.error is None, out.message
    failed_urls = {f.split(": ", 1)[0] for f in out.failed}
    assert {str(local["empty"]), str(local["garbage"])} <= failed_urls
    # 0: the first failed shard ends the stream
    out = drain(train(urls, local["good0"], workers, max_failed_shards=0))
    assert out.error is not None and "failed shards in a row: 1," in out.message, out.message


# --- outages: the test's own S3 server stopped and started again --------------------------------

OUTAGE_S = 2.0  # and about 2 s more to restart: botocore gives up on each request meanwhile
LAG_S = 4.0  # what waiting may add beyond the outage (the attempt under way, our backoff, load)


@pytest.fixture
def outage_urls(weed, local):  # noqa: F811  (the fixture imported above)
    """The two good shards on a server of the test's own (``weed``: boto3 and forked children
    pointed at it, quick to give up)."""
    urls = [f"s3://{weed.server.bucket}/outage/{local[k].name}" for k in ("good0", "good1")]
    for k, url in zip(("good0", "good1"), urls, strict=True):
        storage.upload_file(local[k], url)
    storage.register_webdataset_s3()
    return urls


@pytest.mark.parametrize("workers", [0, 2])
def test_an_outage_costs_time_not_samples(weed, outage_urls, local, capfd, workers):  # noqa: F811
    """The store goes down as a pass starts and is back OUTAGE_S later: the train stream and the
    eval reader wait, read every sample, and the wait is counted once however many workers
    waited at the same time (two shards, two workers); one line says so, not one per worker."""
    loaders = {
        "train": train(outage_urls, local["good0"], workers, batch=4),
        "eval": evaluate(info_of(outage_urls), workers),
    }
    for name, make in loaders.items():
        before = storage.waited_s()  # shared with forked children: they add to it
        with weed.down_for(OUTAGE_S) as outage:
            out = drain(make)
        assert out.error is None and out.failed == [], (name, out)
        assert out.batches == 2 * SAMPLES // 4, (name, out)
        waited = storage.waited_s() - before
        assert outage.seconds - 1.0 <= waited <= outage.seconds + LAG_S, (name, waited, outage.seconds)
    err = capfd.readouterr().err
    assert err.count("artclf: waiting for s3://") == 2 and err.count(" reachable again after ") == 2, err
    assert "skipping" not in err, err


@pytest.mark.parametrize("workers", [0, 1])
def test_an_outage_past_the_patience_ends_the_pass(s3_outage, outage_urls, local, workers):  # noqa: F811
    """Not a failed shard to skip: StorageUnavailable, from a DataLoader worker too, naming the
    shard and the patience, within the patience and one last attempt."""
    storage.set_patience(1.0)  # inherited by the forked child and its workers
    s3_outage.stop()
    for make in (train(outage_urls, local["good0"], workers), evaluate(info_of(outage_urls), workers)):
        out = drain(make)
        assert out.error is not None and "StorageUnavailable" in out.error, out
        assert "PermanentStorageError" not in out.error and "skipping" not in out.message, out
        assert "cannot reach the S3 endpoint" in out.message and "--storage-patience" in out.message
        assert any(u in out.message for u in outage_urls), out.message
        assert out.seconds < 1.0 + LAG_S, out.seconds


@pytest.mark.slow  # ~15 s: PyTorch waits 5 s for a stuck worker before it terminates it
def test_timeout_ends_a_stalled_read(local, tmp_path):
    stalled = tmp_path / "train-000005.tar"
    os.mkfifo(stalled)  # opening it for reading waits for a writer that never comes
    out = drain(train([stalled], local["good0"], workers=1, timeout=2))
    assert out.error is not None and "timed out after 2 seconds" in out.message, out
    assert out.seconds < 15
    out = drain(evaluate(info_of([stalled]), workers=1, timeout=2))
    assert out.error is not None and "timed out after 2 seconds" in out.message, out
    # without workers PyTorch has no timeout: it is ignored, not an error
    assert drain(train([local["good0"]], local["good0"], workers=0, timeout=2)).batches == SAMPLES // 4


def test_a_shard_set_whose_samples_all_fail_to_decode_raises(tmp_path):
    """Readable tars of undecodable images: every sample reads, none decodes; the first batch
    ends the run instead of every batch of every epoch failing."""
    urls = []
    for i in range(2):
        path = tmp_path / f"train-{i:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for j in range(SAMPLES):
                sink.write({"__key__": f"bad{i}_{j:03d}", "jpg": b"not an image", "cls": "0"})
        urls.append(str(path))
    index = index_shards(urls)
    order = Order(len(index), 4, seed=0)
    out = drain(lambda: train_loader(index, order, 0, 0, PRE, 0))
    assert out.error and "ArtclfError" in out.error, out
    assert "no sample of a train batch of 4 could be used (the last: bad" in out.message


# --- the stages over a shard set on S3 with one shard that stays unreadable --------------------

STAGE_S = 300.0  # far above a tiny-recipe epoch or an evaluation here (about 10 s)
EXIT_S = 20.0  # after its error line a stage has ended its workers and exited (about 1 s here)
BATCH = 8
# Bytes that are no tar, as many as the shard had, in place of it after _info.json and the index
# were written. S3 serves them without a hitch, so storage has nothing to retry (a stream that
# breaks is reopened, tests/test_storage.py) and the tar reader fails: failed samples (a failed
# shard, for eval), skipped and counted, not a permanent answer.
NOT_A_TAR_SEED = 12


@dataclass(frozen=True)
class Broken:
    """A copy of the ``shards`` fixture on S3 with one shard of some splits made unreadable."""

    url: str  # s3://bucket/prefix of the shard set
    bad: dict[str, str]  # split -> URL of its unreadable shard
    lengths: dict[str, int]  # split -> samples in that shard (_info.json: shard_lengths)
    totals: dict[str, int]  # split -> samples in the split (the sum of its shard_lengths)


def s3_copy(s3_server, shards: Path, broken: dict[str, int]) -> Broken:
    """Upload ``shards`` to a fresh prefix with plain boto3, then overwrite shard ``i`` of each
    ``split: i`` in ``broken`` with NOT_A_TAR."""
    prefix, client = uuid.uuid4().hex[:10], s3_server.client()
    for path in sorted(p for p in shards.rglob("*") if p.is_file()):
        client.upload_file(str(path), s3_server.bucket, f"{prefix}/{path.relative_to(shards).as_posix()}")
    info = json.loads((shards / "_info.json").read_text())["splits"]
    url = f"s3://{s3_server.bucket}/{prefix}"
    bad, lengths = {}, {}
    for split, i in broken.items():
        name = info[split]["filenames"][i]
        garbage = np.random.default_rng(NOT_A_TAR_SEED).bytes((shards / name).stat().st_size)
        client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/{name}", Body=garbage)
        bad[split], lengths[split] = f"{url}/{name}", info[split]["shard_lengths"][i]
    totals = {split: sum(s["shard_lengths"]) for split, s in info.items()}
    return Broken(url, bad, lengths, totals)


def run_stage(cmd: list[str], env: dict, error: str) -> tuple[int | None, str]:
    """Run ``cmd`` to its end (None: still running at the deadline); once its output shows
    ``error``, it has EXIT_S to exit. The process tree is killed either way."""
    # one thread per process: the trainer and its loader worker share 2 cores here
    with procs.running(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}) as proc:
        deadline = time.monotonic() + STAGE_S
        while proc.poll() is None and error not in procs.output(proc) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=EXIT_S)
        return proc.poll(), procs.output(proc)


def stage_train(broken: Broken, run: Path, env: dict, *extra: str) -> tuple[int | None, str]:
    """``artclf train`` over the broken copy, with a shard cache of its own (copies of the same
    set share their index: a cache filled from a good copy would hide the broken shard)."""
    cmd = [sys.executable, *train_cmd(broken.url, run, "--epochs", "1", "--batch-size", str(BATCH), *extra)]
    return run_stage(cmd, {**env, "ARTCLF_CACHE": str(run.parent / "cache")}, "artclf train: error:")


@dataclass(frozen=True)
class Ran:
    broken: Broken
    split: str  # the one whose unreadable shard the stage met
    code: int | None  # None: still running at the deadline
    out: str
    run: Path  # the run folder (train) or output folder (evaluate)


@pytest.fixture(scope="module")
def bad_train_copy(s3_server, shards) -> Broken:
    return s3_copy(s3_server, shards, {"train": 0})


@pytest.fixture(scope="module")
def bad_train_shard(s3_server, bad_train_copy, tmp_path_factory) -> Ran:
    """One epoch of the tiny recipe over a shard set whose train shard 0 is unreadable."""
    run = tmp_path_factory.mktemp("bad-train") / "run"
    return Ran(bad_train_copy, "train", *stage_train(bad_train_copy, run, s3_server.env()), run)


def test_train_skips_an_unreadable_train_shard(bad_train_shard):
    broken, code, out = bad_train_shard.broken, bad_train_shard.code, bad_train_shard.out
    assert code == 0, out[-4000:]
    (row,) = history(bad_train_shard.run)
    assert row["step"] == broken.totals["train"] // BATCH  # one exact pass, 1 process
    assert row["val_n"] == broken.totals["val"]  # val was readable, all of it
    assert row["skipped_samples"] > 0


def test_train_counts_the_samples_of_the_skipped_shard_and_names_it(bad_train_shard):
    broken, out = bad_train_shard.broken, bad_train_shard.out
    (row,) = history(bad_train_shard.run)
    # every sample of the shard the epoch visits: epoch 1 leaves out the first N mod B samples of
    # the flat order (docs/design.md), which are shard 0's first ones
    length, left_out = broken.lengths["train"], broken.totals["train"] % BATCH
    assert row["skipped_samples"] == length - min(left_out, length)
    # the trainer copies S3 shards to its node-local cache and checks each against _info.json
    said = [line for line in out.splitlines() if broken.bad["train"] in line]
    assert said and all("is not _info.json's" in line for line in said), out[-4000:]
    assert "shard changed after it was packed" in said[0]


@pytest.fixture(scope="module")
def max_failed_0(s3_server, bad_train_copy, tmp_path_factory) -> Ran:
    run = tmp_path_factory.mktemp("max-failed-0") / "run"
    code, out = stage_train(bad_train_copy, run, s3_server.env(), "--max-failed-shards", "0")
    return Ran(bad_train_copy, "train", code, out, run)


def test_max_failed_shards_0_fails_on_the_first_naming_the_shard(max_failed_0):
    url, out = max_failed_0.broken.bad["train"], max_failed_0.out
    assert "artclf train: error: " in out, out[-4000:]
    line = next(line for line in out.splitlines() if "more than max_failed_shards=0" in line)
    assert line.startswith(f"artclf.errors.ArtclfError: {url}: sha256 "), line  # the worker's error
    assert "failed shards in a row: 1," in line
    assert not (max_failed_0.run / "history.jsonl").exists()


def test_max_failed_shards_0_exits_1(max_failed_0):
    code = max_failed_0.code
    assert code == 1, f"exit {code} ({EXIT_S:.0f} s after its error line; None: still running)"


@pytest.fixture(scope="module", params=["evaluate", "train"])
def bad_eval_shard(request, s3_server, shards, tmp_path_factory) -> Ran:
    """``evaluate --split test`` with trained_run's model, or one epoch of training (its val
    pass), over a shard set whose shard 1 of val and of test is unreadable."""
    broken = s3_copy(s3_server, shards, {"val": 1, "test": 1})
    out = tmp_path_factory.mktemp(f"bad-eval-{request.param}")
    if request.param == "train":
        return Ran(broken, "val", *stage_train(broken, out / "run", s3_server.env()), out / "run")
    model = request.getfixturevalue("trained_run") / "model.pt"
    cmd = [sys.executable, "-m", "artclf", "evaluate", "--model", str(model), "--shards", broken.url,
           "--split", "test", "--out", str(out), "--workers", "1", "--batch-size", str(BATCH)]  # fmt: skip
    return Ran(broken, "test", *run_stage(cmd, s3_server.env(), "artclf evaluate: error:"), out)


def scored(ran: Ran) -> dict:
    """What the stage wrote about the split: samples scored ("n") and reported missing."""
    if (ran.run / "metrics.json").exists():  # evaluate
        m = json.loads((ran.run / "metrics.json").read_text())
        return {"n": m["n"], "missing": m["skipped_samples"]}
    (row,) = history(ran.run)  # train: its val pass
    return {"n": row["val_n"], "missing": row["val_skipped_samples"]}


def test_the_rest_is_scored_and_the_missing_samples_are_counted(bad_eval_shard):
    """The stage finishes; its metrics are over the readable samples and say how many are not."""
    ran = bad_eval_shard
    total, length = ran.broken.totals[ran.split], ran.broken.lengths[ran.split]
    assert ran.code == 0, ran.out[-4000:]
    assert scored(ran) == {"n": total - length, "missing": length}


def test_an_unreadable_eval_shard_is_named_and_its_samples_counted(bad_eval_shard):
    ran = bad_eval_shard
    url, length = ran.broken.bad[ran.split], ran.broken.lengths[ran.split]
    said = [line for line in ran.out.splitlines() if url in line]
    assert said and all("ReadError" in line for line in said), ran.out[-4000:]
    if ran.split == "test":  # artclf evaluate says it on its own too
        assert f"{length} of {ran.broken.totals['test']} samples unreadable" in ran.out, ran.out[-4000:]
