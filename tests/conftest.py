import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one torch thread per worker (and per process it starts),
    os.environ["OMP_NUM_THREADS"] = "1"  # and idle OpenMP threads sleep: threads of two workers spin-waiting for one
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # core slow both ~5x (the learning checks pin 2 threads of their own)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pickle  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import openpyxl  # noqa: E402
import pytest  # noqa: E402
import torchvision  # noqa: E402

from cli import run_main  # noqa: E402


TINY_RUN = ["--width", "0.25", "--dataset", "synthetic", "--subset", "64", "--batch-size", "32", "--workers", "0"]


def sheet_rows(path, sheet="runs"):
    """The rows of a workbook sheet as dicts by header."""
    ws = openpyxl.load_workbook(path)[sheet]
    header = [c.value for c in ws[1]]
    return [dict(zip(header, [c.value for c in row])) for row in ws.iter_rows(min_row=2)]


def log_of(run_dir):
    """A run's per-epoch log.csv as dicts by header."""
    import csv
    with open(Path(run_dir) / "log.csv") as f:
        return list(csv.DictReader(f))


class Killed(Exception):
    """Raised by a test's epoch callback: the run ends there as a kill would, after that epoch's checkpoint."""


def kill_after_first_epoch(method, options, given):
    """training.run of these (parsed) options, killed after its first epoch."""
    import training

    def kill(epoch, metrics):
        raise Killed

    with pytest.raises(Killed):
        training.run(method, options, on_epoch=kill, given=given)



TINY_MOCO = [*TINY_RUN, "--moco-k", "64", "--bn-splits", "2", "--linear-epochs", "2"]


def moco_run(tmp_path, *extra, name="run", epochs=1):
    """The MoCo door on TINY_MOCO into tmp_path/name, its row in tmp_path/results.xlsx; returns the run dir."""
    import moco_augmented
    moco_augmented.main([*TINY_MOCO, "--epochs", str(epochs), "--results", str(tmp_path / "results.xlsx"),
                         "--results-dir", str(tmp_path / name), *extra])
    return tmp_path / name


def moco_killed_after_epoch_1(tmp_path, *extra, name):
    """A 2-epoch run of the MoCo door, killed after its first epoch; returns the run dir."""
    import methods
    import moco_augmented
    options, given = moco_augmented.parse_args([*TINY_MOCO, "--epochs", "2", "--results", str(tmp_path / "results.xlsx"),
                                                "--results-dir", str(tmp_path / name), *extra])
    kill_after_first_epoch(methods.MoCo, options, given)
    return tmp_path / name

def error_of(argv, capsys, main):
    """Run a door as `python <door>.py` would; assert it ends in exit code 2 with one `error:` line and no traceback,
    and return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error: " in line]  # progress bars may precede it
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0][errors[0].index("error: "):]


def method_options(method, **overrides):
    """A method's full options (its recipe's defaults) with overrides, for building it directly in a test."""
    import run_options
    return run_options.default_options(method, **overrides)


def small_moco(**overrides):
    """A MoCo small enough for unit tests (ResNet-18, 16-d keys, a queue of 32), seeded."""
    import torch
    from methods import MoCo
    torch.manual_seed(0)
    options = method_options(MoCo, **{"moco_dim": 16, "moco_k": 32, "moco_m": 0.9, "bn_splits": 2, **overrides})
    return MoCo(options, 10, True, options.bn_splits)


# --- CIFAR files in the real format (the datasets tests and the doors' end-to-end runs) ----------------------

RNG = np.random.default_rng(1234)


def random_images(n, size):
    return RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def trust_checksums(monkeypatch):
    """Our fake archives have other md5s than the real ones: accept any file that exists (tests only)."""
    exists = lambda fpath, md5=None: os.path.isfile(fpath)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.stl10, "check_integrity", exists)


# --- CIFAR: Python-2 pickles like the real archives (keys are py2 str: bytes under encoding="bytes") ---------


class Py2Str(bytes):
    pass


class Py2Pickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))

    dispatch[Py2Str] = save_py2_str


def write_py2_pickle(path, entry):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump({Py2Str(key): value for key, value in entry.items()})


def cifar_batch(images, labels, label_key, batch_label):
    return {
        b"batch_label": Py2Str(batch_label),
        label_key: [int(x) for x in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),  # row-major CHW
        b"filenames": [Py2Str(b"img_%d.png" % i) for i in range(len(images))],
    }


def write_cifar10(root, per_batch=2, n_test=3):
    folder = root / "cifar-10-batches-py"
    train_images, train_labels = random_images(5 * per_batch, 32), RNG.integers(0, 10, 5 * per_batch)
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        batch = cifar_batch(train_images[part], train_labels[part], b"labels", b"training batch %d of 5" % (b + 1))
        write_py2_pickle(folder / f"data_batch_{b + 1}", batch)
    test_images, test_labels = random_images(n_test, 32), RNG.integers(0, 10, n_test)
    write_py2_pickle(folder / "test_batch", cifar_batch(test_images, test_labels, b"labels", b"testing batch 1 of 1"))
    names = [Py2Str(b"class%d" % i) for i in range(10)]
    write_py2_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return train_images, train_labels, test_images, test_labels


def write_cifar100(root, n_train=6, n_test=3):
    folder = root / "cifar-100-python"
    train_images, train_labels = random_images(n_train, 32), RNG.integers(0, 100, n_train)
    test_images, test_labels = random_images(n_test, 32), RNG.integers(0, 100, n_test)
    for name, images, labels in [("train", train_images, train_labels), ("test", test_images, test_labels)]:
        batch = cifar_batch(images, labels, b"fine_labels", name.encode())
        batch[b"coarse_labels"] = [int(x) // 5 for x in labels]
        write_py2_pickle(folder / name, batch)
    write_py2_pickle(folder / "meta", {b"fine_label_names": [Py2Str(b"f%d" % i) for i in range(100)],
                                       b"coarse_label_names": [Py2Str(b"c%d" % i) for i in range(20)]})
    return train_images, train_labels, test_images, test_labels


# --- ImageFolder trees ------------------------------------------------------------------------------------------

def write_image(path, rgb, ext=".png"):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path.with_suffix(ext)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def pure(colour, size=20):
    return np.broadcast_to(np.array(colour, np.uint8), (size, size, 3)).copy()


def write_image_folder(root, classes=("n01", "n02")):
    for split, count in [("train", 3), ("val", 2)]:
        for label, wnid in enumerate(classes):
            for i in range(count):
                write_image(root / split / wnid / f"{i}", pure((255, 0, 0) if label == 0 else (0, 0, 255)),
                            ".png" if i % 2 == 0 else ".JPEG")


# --- search_augment.py as a user starts it ---------------------------------------------------------------------

TINY_SEARCH = ["--method", "supervised", "--width", "0.25", "--dataset", "synthetic", "--subset", "48",
               "--batch-size", "16", "--workers", "0", "--crop-size", "16", "--epochs", "1",
               "--val-size", "40"]  # 16 px, a quarter of the width


def start_search(argv, cwd, log):
    """search_augment.py as its own process, as a user starts it (a second terminal, a second machine)."""
    import signal
    import subprocess
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    script = Path(__file__).resolve().parents[1] / "search_augment.py"
    # Ctrl-C as in a terminal: a suite started in the background (`cmd &` without job control) ignores SIGINT, and
    # a process inherits an ignored signal
    return subprocess.Popen([sys.executable, "-u", str(script), *argv], cwd=cwd, env=env,
                            stdout=open(Path(cwd) / log, "w"), stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def needs(what, found):
    """Skip with one line when a Debian package a test needs is missing; under CI=true (.ci/run installs them) fail."""
    if not found:
        message = f"needs {what} (.ci/run installs it)"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)


# --- PostgreSQL: a throwaway server (initdb in a temp dir, loopback, a free port) ---------------------------------

def free_port():
    """A loopback port nothing listens on (now)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """Debian's PostgreSQL binaries run as an unprivileged user (postgres refuses root): `initdb` into a fresh temp
    dir, a server on 127.0.0.1 at a free port with trust authentication, stopped and started at will."""

    def __init__(self, bin_dir):
        import tempfile
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="pg-"))  # not under pytest's 0700 tmp: the server user reads it
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self.as_user = []
        if os.geteuid() == 0:  # CI runs as root: the package's `postgres` system user runs the server
            import shutil
            shutil.chown(self.root, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.pg("initdb", "-D", self.data, "-U", "search", "--auth=trust", "--no-sync", "-E", "UTF8")

    def pg(self, tool, *args):
        import subprocess
        subprocess.run([*self.as_user, str(self.bin_dir / tool), *map(str, args)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self):
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} -c fsync=off"
        self.pg("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start")

    def stop(self):
        self.pg("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def new_database(self, name):
        """A fresh database on this server, and its SQLAlchemy URL (what --storage takes)."""
        import psycopg
        with psycopg.connect(host="127.0.0.1", port=self.port, user="search", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://search@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres():
    import shutil
    candidates = [Path(p).parent for p in [shutil.which("pg_ctl")] if p]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # Debian keeps them off PATH
    bin_dir = next((d for d in candidates if (d / "initdb").exists() and (d / "pg_ctl").exists()), None)
    needs("Debian's postgresql (initdb, pg_ctl)", bin_dir)
    server = PostgresServer(bin_dir)
    server.start()
    yield server
    try:
        server.stop()
    except Exception:  # a test left it stopped
        pass
    shutil.rmtree(server.root, ignore_errors=True)
