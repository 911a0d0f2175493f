"""Quantization with llama-cpp-python's ``llama_model_quantize`` binding; no llama.cpp binary is needed."""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..errors import ExportError
from .config import QuantType

logger = logging.getLogger(__name__)

# llama-cpp-python prints llama.cpp's log lines to stderr unless its logger is set above INFO.
_LLAMA_CPP_LOGGER = "llama-cpp-python"


def quantizer_problem(quant: QuantType) -> Optional[str]:
    """Return why ``quant`` cannot be produced here, or None when the quantizer is ready (or not needed)."""
    if quant.llama_ftype is None:
        return None
    try:
        import llama_cpp
    except ImportError as exc:
        return f"llama-cpp-python cannot be imported ({exc})"
    missing = [name for name in ("llama_model_quantize", "llama_model_quantize_default_params", quant.llama_ftype)
               if not hasattr(llama_cpp, name)]
    if missing:
        return f"the installed llama-cpp-python lacks {', '.join(missing)}"
    return None


def require_quantizer(quant: QuantType) -> None:
    problem = quantizer_problem(quant)
    if problem is not None:
        raise ExportError(
            f"cannot quantize to {quant.name}: {problem}. Fix: install llama-cpp-python (make setup), "
            "or export with --quant f16, which needs no quantizer"
        )


@contextmanager
def quiet_llama_cpp() -> Iterator[None]:
    """Keep llama.cpp's log lines off the terminal while inside the block.

    Some lines (the SWA cache notice when a context is created, buffer sizes
    when it is freed) reach file descriptor 2 past llama-cpp-python's logger
    even with ``verbose=False`` (llama-cpp-python 0.3.36), so the descriptor
    itself points to the null device meanwhile.
    """
    llama_logger = logging.getLogger(_LLAMA_CPP_LOGGER)
    previous = llama_logger.level
    llama_logger.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
        llama_logger.setLevel(previous)


def quantize_gguf(source: Path, target: Path, quant: QuantType, log_path: Path, threads: Optional[int] = None) -> None:
    """Write ``target``, ``source`` quantized to ``quant``; raise ExportError on failure.

    The quantizer runs in a child process whose output goes to ``log_path``:
    llama.cpp prints a line per tensor that needs a fallback type straight to
    stderr, past llama-cpp-python's logger, and a crash in native code then
    stops only the child.
    """
    require_quantizer(quant)
    target.unlink(missing_ok=True)
    threads = threads or os.cpu_count() or 1
    logger.info("quantizing %s to %s with %d threads", source.name, quant.name, threads)
    command = [sys.executable, "-m", __name__, str(source), str(target), quant.llama_ftype, str(threads)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0 or not target.exists():
        target.unlink(missing_ok=True)
        lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        raise ExportError(f"llama.cpp could not quantize {source.name} to {quant.name} (exit code {code}): "
                          f"{lines[-1] if lines else 'no output'}; see {log_path}")


def _quantize_in_this_process(source: str, target: str, ftype_name: str, threads: int) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))
    if code != 0:
        print(f"llama_model_quantize returned {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(1 if _quantize_in_this_process(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])) else 0)
