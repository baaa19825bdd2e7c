"""Output-path problems in every command end in one line naming the path and what its errno means.

One handler in ``pai_patch.cli.main`` does it for every registered command; these tests drive an
``OSError`` through each command's entry, then the real failures: a prefix under a regular file, a
full disk found before a conversion starts, and torch's ``unexpected pos`` when a write is cut short.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pai_patch import utils
from pai_patch.cli import COMMANDS, describe_os_error, main

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_turns_an_oserror_into_one_line(command, tmp_path, capsys, monkeypatch):
    module = importlib.import_module(COMMANDS[command][0])
    monkeypatch.setattr(module, "add_arguments", lambda parser: None)

    def run(args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "out"))

    monkeypatch.setattr(module, "run", run)
    assert main([command]) == 2
    assert _one_error_line(capsys) == f"error: {tmp_path / 'out'}: read-only file system (EROFS)"


def test_each_errno_is_explained(tmp_path, monkeypatch):
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(OSError) as under_file:
        open(regular / "sub" / "out.bin", "wb")
    assert describe_os_error(under_file.value) == (f"{regular}/sub/out.bin: not a directory (ENOTDIR); {regular} is "
                                                   "a regular file, so nothing can be created under it")
    with pytest.raises(OSError) as is_file:
        regular.mkdir(parents=True, exist_ok=True)
    assert describe_os_error(is_file.value) == (f"{regular}: file exists (EEXIST); it is a regular file where a "
                                                "directory is needed")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 20, 9 << 20, 1 << 20))
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "new" / "out.bin"))
    assert describe_os_error(full) == f"{tmp_path}/new/out.bin: no space left on device (ENOSPC); 1.0 MiB free on its file system"
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "out"))
    assert describe_os_error(denied) == f"{tmp_path}/out: permission denied (EACCES); check the owner and mode of {tmp_path}"
    assert describe_os_error(OSError(errno.EIO, os.strerror(errno.EIO))) == "input/output error (EIO)"
    assert describe_os_error(FileNotFoundError("x.idx: no such index file")) == "x.idx: no such index file"


def test_a_write_error_names_the_final_path_not_the_temporary(tmp_path):
    final = tmp_path / "out.bin"
    with pytest.raises(OSError) as err:
        with utils.atomic_path(final) as tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() on a full disk raises: no file
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(final)
    assert not tmp.exists() and not final.exists()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    from pai_patch.recipes.hf_init import write_random_hf

    out = tmp_path_factory.mktemp("hf") / "hf"
    write_random_hf("qwen2_5", "tiny", out, "shipped", seed=3)
    return out


def _hf2mcore(hf: Path, out: Path) -> list[str]:
    return ["convert", "hf2mcore", "--model", "qwen2_5", "--size", "tiny", "--hf", str(hf), "--mcore", str(out)]


def test_hf2mcore_says_how_much_room_it_needs_before_writing(hf_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 20, 10 << 20, 0))
    assert main(_hf2mcore(hf_dir, tmp_path / "mcore")) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {tmp_path / 'mcore'}: writing it needs ")
    assert line.endswith(" MiB, more than the 0.0 MiB free on its file system (ENOSPC)")
    assert list(tmp_path.iterdir()) == []


#: a conversion in a process whose files may not grow past 200 KiB (as a full disk, the write is cut short)
CUT_SHORT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200 << 10, resource.RLIM_INFINITY))
from pai_patch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fmt", ["torch_dist", "legacy"])
def test_hf2mcore_write_cut_short_is_one_line_not_unexpected_pos(hf_dir, tmp_path, fmt):
    out = tmp_path / "mcore"
    result = subprocess.run([sys.executable, "-c", CUT_SHORT, *_hf2mcore(hf_dir, out), "--format", fmt], cwd=ROOT,
                            capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "unexpected pos" not in result.stderr, result.stderr
    assert re.findall(r"error: .*", result.stderr) == [f"error: {out}: file too large: `ulimit -f` allows {200 << 10} bytes per file (EFBIG)"]
    assert list(tmp_path.iterdir()) == []

